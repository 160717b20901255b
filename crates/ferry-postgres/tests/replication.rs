//! The replication connection and the pgoutput decoder against a real PostgreSQL
//! (`scripts/services start`; connection from `FERRY_TEST_PG_*`).
//!
//! Each test works in a throwaway database: it creates a slot with an exported snapshot,
//! checks that the snapshot holds exactly the rows committed before the slot, then streams
//! and decodes the changes made after it. Every wait for a message or a catalog state is
//! bounded by [`WAIT`]; nothing sleeps a fixed time.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use ferry_core::ident::{pg_ident, pg_literal};
use ferry_core::peer::PostgresConfig;
use ferry_core::{ErrorKind, Lsn};
use ferry_postgres::pgoutput::{
    OldTuple, PgOutputDecoder, PgOutputMessage, RelationBody, ReplicaIdentity, TupleColumn,
    TupleData,
};
use ferry_postgres::replication::{
    PgOutputOptions, ReplicationConnection, ReplicationMessage, ReplicationStream,
};
use ferry_testkit::{random_name, PgServer, TempPgDatabase};
use tokio_postgres::Client;

/// The longest any single expected event may take.
const WAIT: Duration = Duration::from_secs(30);

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

fn config(db: &TempPgDatabase) -> PostgresConfig {
    PostgresConfig {
        host: db.server.host.clone(),
        port: db.server.port,
        user: db.server.user.clone(),
        password: db.server.password.clone(),
        database: db.name.clone(),
        ssl_mode: Default::default(),
        ssl_root_cert: None,
    }
}

async fn lsn_query(client: &Client, sql: &str, slot: &str) -> Option<Lsn> {
    let row = client.query_opt(sql, &[&slot]).await.unwrap()?;
    let text: Option<String> = row.get(0);
    text.map(|t| t.parse().unwrap())
}

async fn confirmed_flush(client: &Client, slot: &str) -> Option<Lsn> {
    lsn_query(
        client,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        slot,
    )
    .await
}

/// Polls until `check` holds, for at most [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    bounded(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A column as text: `NULL`, `<toast>` for an unchanged TOASTed value, or the text value.
fn cols(t: &TupleData) -> Vec<String> {
    t.columns
        .iter()
        .map(|c| match c {
            TupleColumn::Null => "NULL".to_owned(),
            TupleColumn::UnchangedToast => "<toast>".to_owned(),
            TupleColumn::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
            TupleColumn::Binary(_) => panic!("binary value without binary mode"),
        })
        .collect()
}

/// One decoded transaction.
#[derive(Debug)]
struct Txn {
    xid: u32,
    final_lsn: Lsn,
    commit_lsn: Lsn,
    end_lsn: Lsn,
    /// Everything between Begin and Commit except Relation and Type.
    changes: Vec<PgOutputMessage>,
}

/// The decoded stream, answering keepalives on the way.
struct Feed {
    stream: ReplicationStream,
    decoder: PgOutputDecoder,
    /// What status updates report as flushed.
    confirmed: Lsn,
    relations: HashMap<u32, RelationBody>,
}

impl Feed {
    fn new(stream: ReplicationStream, confirmed: Lsn) -> Feed {
        Feed {
            stream,
            decoder: PgOutputDecoder::new(),
            confirmed,
            relations: HashMap::new(),
        }
    }

    /// The next pgoutput message, within [`WAIT`]. Relation messages are remembered.
    async fn next(&mut self) -> PgOutputMessage {
        let m = bounded("a pgoutput message", async {
            loop {
                match self.stream.next().await.expect("replication stream") {
                    Some(ReplicationMessage::XLogData { data, .. }) => {
                        return self.decoder.decode(data).expect("decodable pgoutput");
                    }
                    Some(ReplicationMessage::PrimaryKeepalive {
                        reply_requested, ..
                    }) => {
                        if reply_requested {
                            let c = self.confirmed;
                            self.stream.send_status(c, c, c, false).await.unwrap();
                        }
                    }
                    None => panic!("the server ended the stream"),
                }
            }
        })
        .await;
        if let PgOutputMessage::Relation(r) = &m {
            self.relations.insert(r.id, r.clone());
        }
        m
    }

    /// The next message that is not a Relation or Type.
    async fn next_change(&mut self) -> PgOutputMessage {
        loop {
            match self.next().await {
                PgOutputMessage::Relation(_) | PgOutputMessage::Type(_) => {}
                m => return m,
            }
        }
    }

    /// The next transaction, from Begin to Commit.
    async fn txn(&mut self) -> Txn {
        let (final_lsn, xid) = match self.next_change().await {
            PgOutputMessage::Begin { final_lsn, xid, .. } => (final_lsn, xid),
            other => panic!("expected Begin, got {other:?}"),
        };
        let mut changes = Vec::new();
        loop {
            match self.next_change().await {
                PgOutputMessage::Commit {
                    commit_lsn,
                    end_lsn,
                    flags,
                    ..
                } => {
                    assert_eq!(flags, 0);
                    return Txn {
                        xid,
                        final_lsn,
                        commit_lsn,
                        end_lsn,
                        changes,
                    };
                }
                m => changes.push(m),
            }
        }
    }

    /// The next transaction, which must hold exactly one change.
    async fn single(&mut self) -> PgOutputMessage {
        let mut t = self.txn().await;
        assert_eq!(t.changes.len(), 1, "{t:?}");
        t.changes.remove(0)
    }
}

async fn oid(client: &Client, table: &str) -> u32 {
    client
        .query_one("SELECT $1::text::regclass::oid", &[&table])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn slot_snapshot_and_pgoutput_v1() {
    let db = PgServer::from_env().temp_database("ferry_repl").await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
             CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
             CREATE PUBLICATION ferry_pub FOR TABLE items, docs;
             INSERT INTO items SELECT g, 'before ' || g, g FROM generate_series(1, 3) g;
             INSERT INTO docs VALUES (1, repeat('x', 10000), 0);",
        )
        .await
        .unwrap();
    let items = oid(&client, "items").await;
    let docs = oid(&client, "docs").await;
    // A wrong password keeps PostgreSQL's SQLSTATE.
    let cfg = config(&db);
    let wrong = PostgresConfig {
        password: "not the password".into(),
        ..cfg.clone()
    };
    let e = ReplicationConnection::connect(&wrong).await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::Permission, "28P01"),
        "{e}"
    );

    let missing = PostgresConfig {
        database: format!("{}_missing", db.name),
        ..cfg.clone()
    };
    let e = ReplicationConnection::connect(&missing).await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::NotFound, "3D000"),
        "{e}"
    );

    let mut conn = ReplicationConnection::connect(&cfg).await.unwrap();
    let version: String = client
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(conn.server_version_num().to_string(), version);

    let system = conn.identify_system().await.unwrap();
    assert_eq!(system.dbname, db.name);
    assert!(system.timeline >= 1);
    assert!(system.xlogpos > Lsn::ZERO);
    let systemid: i64 = client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(system.systemid, systemid as u64);

    let e = conn.create_slot("Not-Valid", false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);

    // The slot and its snapshot: exactly the three rows committed before it.
    let slot = random_name("ferry_slot");
    let created = conn.create_slot(&slot, false).await.unwrap();
    assert_eq!(created.slot_name, slot);
    assert!(created.consistent_point >= system.xlogpos);
    let snapshot = created.snapshot_name.clone().expect("an exported snapshot");

    let reader = db.connect().await;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
            pg_literal(&snapshot)
        ))
        .await
        .unwrap();
    let writer = db.connect().await;
    writer
        .batch_execute("INSERT INTO items VALUES (4, 'after 4', 4), (5, 'after 5', 5)")
        .await
        .unwrap();
    let ids = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<i32>>();
    let in_snapshot = ids(reader
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .unwrap());
    assert_eq!(in_snapshot, [1, 2, 3]);
    let now = ids(writer
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .unwrap());
    assert_eq!(now, [1, 2, 3, 4, 5]);
    reader.batch_execute("COMMIT").await.unwrap();

    // The snapshot is imported; the connection may run commands again.
    let e = conn.create_slot(&slot, false).await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::AlreadyExists, "42710"),
        "{e}"
    );

    let options = PgOutputOptions {
        publication_names: vec!["ferry_pub".into()],
        proto_version: 1,
        streaming: false,
        messages: true,
        binary: false,
    };
    let stream = conn
        .start_replication(&slot, created.consistent_point, &options)
        .await
        .unwrap();
    let mut feed = Feed::new(stream, created.consistent_point);

    // The inserts made after the slot, as one transaction.
    let first = feed.txn().await;
    assert_eq!(first.final_lsn, first.commit_lsn);
    assert!(first.commit_lsn > created.consistent_point);
    assert!(first.end_lsn > first.commit_lsn);
    let inserted: Vec<Vec<String>> = first
        .changes
        .iter()
        .map(|c| match c {
            PgOutputMessage::Insert {
                xid: None,
                relation_id,
                new,
            } if *relation_id == items => cols(new),
            other => panic!("expected an insert into items, got {other:?}"),
        })
        .collect();
    assert_eq!(inserted, [["4", "after 4", "4"], ["5", "after 5", "5"]]);
    let rel = &feed.relations[&items];
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "items")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    let shape: Vec<_> = rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key, c.type_oid, c.type_modifier))
        .collect();
    assert_eq!(
        shape,
        [
            ("id", true, 23, -1),
            ("name", false, 25, -1),
            ("qty", false, 23, -1)
        ]
    );

    // UPDATE of a non-key column: no old tuple.
    writer
        .batch_execute("UPDATE items SET qty = 40 WHERE id = 4")
        .await
        .unwrap();
    match feed.single().await {
        PgOutputMessage::Update {
            relation_id,
            old: None,
            new,
            ..
        } => {
            assert_eq!(relation_id, items);
            assert_eq!(cols(&new), ["4", "after 4", "40"]);
        }
        other => panic!("expected an update, got {other:?}"),
    }
    // UPDATE of the key: the old key comes along.
    writer
        .batch_execute("UPDATE items SET id = 6 WHERE id = 5")
        .await
        .unwrap();
    match feed.single().await {
        PgOutputMessage::Update {
            old: Some(OldTuple::Key(old)),
            new,
            ..
        } => {
            assert_eq!(cols(&old), ["5", "NULL", "NULL"]);
            assert_eq!(cols(&new), ["6", "after 5", "5"]);
        }
        other => panic!("expected an update with the old key, got {other:?}"),
    }
    writer
        .batch_execute("DELETE FROM items WHERE id = 1")
        .await
        .unwrap();
    match feed.single().await {
        PgOutputMessage::Delete {
            relation_id,
            old: OldTuple::Key(old),
            ..
        } => {
            assert_eq!(relation_id, items);
            assert_eq!(cols(&old), ["1", "NULL", "NULL"]);
        }
        other => panic!("expected a delete, got {other:?}"),
    }

    // A transaction of several statements, one rolled back, then messages. (Each its own
    // call: statements after a ROLLBACK in one simple query would share one transaction.)
    for sql in [
        "BEGIN;
         INSERT INTO items VALUES (7, 'seven', 7);
         UPDATE items SET name = 'SEVEN' WHERE id = 7;
         DELETE FROM items WHERE id = 2;
         COMMIT",
        "BEGIN; INSERT INTO items VALUES (8, 'rolled back', 8); ROLLBACK",
        "SELECT pg_logical_emit_message(true, 'p', 'x')",
        "SELECT pg_logical_emit_message(false, 'p', 'y')",
        "INSERT INTO items VALUES (9, 'marker', 9)",
    ] {
        writer.batch_execute(sql).await.unwrap();
    }
    let multi = feed.txn().await;
    assert!(multi.commit_lsn > first.end_lsn, "LSNs increase");
    assert_ne!(multi.xid, first.xid);
    let kinds: Vec<String> = multi
        .changes
        .iter()
        .map(|c| match c {
            PgOutputMessage::Insert { new, .. } => format!("I {}", cols(new).join(",")),
            PgOutputMessage::Update { new, .. } => format!("U {}", cols(new).join(",")),
            PgOutputMessage::Delete { old, .. } => format!("D {}", cols(old.tuple()).join(",")),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["I 7,seven,7", "U 7,SEVEN,7", "D 2,NULL,NULL"]);

    // The rolled-back transaction sent nothing: next comes the transactional message.
    let emitted = feed.txn().await;
    assert!(emitted.commit_lsn > multi.end_lsn);
    match &emitted.changes[..] {
        [PgOutputMessage::Message {
            xid: None,
            transactional: true,
            prefix,
            content,
            lsn,
        }] => {
            assert_eq!((prefix.as_str(), &content[..]), ("p", &b"x"[..]));
            // The end of the message's WAL record: here, where the commit record starts.
            assert!(*lsn > multi.end_lsn && *lsn <= emitted.commit_lsn);
        }
        other => panic!("expected one transactional message, got {other:?}"),
    }
    match feed.next_change().await {
        PgOutputMessage::Message {
            transactional: false,
            prefix,
            content,
            ..
        } => assert_eq!((prefix.as_str(), &content[..]), ("p", &b"y"[..])),
        other => panic!("expected a non-transactional message, got {other:?}"),
    }
    match feed.single().await {
        PgOutputMessage::Insert { new, .. } => assert_eq!(cols(&new), ["9", "marker", "9"]),
        other => panic!("expected the marker insert, got {other:?}"),
    }

    writer
        .batch_execute("TRUNCATE items RESTART IDENTITY")
        .await
        .unwrap();
    match feed.single().await {
        PgOutputMessage::Truncate {
            cascade,
            restart_identity,
            relation_ids,
            ..
        } => {
            assert!(!cascade && restart_identity);
            assert_eq!(relation_ids, [items]);
        }
        other => panic!("expected a truncate, got {other:?}"),
    }

    // An UPDATE that leaves the TOASTed column alone does not resend it.
    writer
        .batch_execute("UPDATE docs SET n = 1 WHERE id = 1")
        .await
        .unwrap();
    let toast = feed.txn().await;
    match &toast.changes[..] {
        [PgOutputMessage::Update {
            relation_id,
            old: None,
            new,
            ..
        }] => {
            assert_eq!(*relation_id, docs);
            assert_eq!(new.columns[1], TupleColumn::UnchangedToast);
            assert_eq!(cols(new), ["1", "<toast>", "1"]);
        }
        other => panic!("expected an update of docs, got {other:?}"),
    }
    assert_eq!(feed.relations[&docs].name, "docs");

    // Confirming a position moves the slot's confirmed_flush_lsn.
    let before = confirmed_flush(&client, &slot).await.unwrap();
    assert!(before < toast.end_lsn, "{before} < {}", toast.end_lsn);
    feed.confirmed = toast.end_lsn;
    let end = toast.end_lsn;
    feed.stream.send_status(end, end, end, false).await.unwrap();
    eventually("confirmed_flush_lsn to advance", || async {
        confirmed_flush(&client, &slot)
            .await
            .is_some_and(|l| l >= end)
    })
    .await;

    // Stop, and drop the slot over the same connection.
    let mut conn = bounded("the stream to stop", feed.stream.stop())
        .await
        .unwrap();
    conn.drop_slot(&slot, false).await.unwrap();
    assert_eq!(confirmed_flush(&client, &slot).await, None);
    let e = conn.drop_slot(&slot, false).await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::NotFound, "42704"),
        "{e}"
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn protocol_v2_streams_large_transactions() {
    let db = PgServer::from_env().temp_database("ferry_repl2").await;
    let client = db.connect().await;
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB';
             CREATE TABLE big (id int PRIMARY KEY, pad text);
             CREATE PUBLICATION ferry_pub FOR TABLE big;",
            pg_ident(&db.name)
        ))
        .await
        .unwrap();
    let big = oid(&client, "big").await;

    // The per-database setting reaches the walsender of this database.
    let mut conn = ReplicationConnection::connect(&config(&db)).await.unwrap();
    let shown = conn
        .simple_query("SHOW logical_decoding_work_mem")
        .await
        .unwrap();
    assert_eq!(shown, [[Some("64kB".to_owned())]]);

    let slot = random_name("ferry_slot");
    let created = conn.create_slot(&slot, true).await.unwrap();
    let options = PgOutputOptions {
        publication_names: vec!["ferry_pub".into()],
        proto_version: 2,
        streaming: true,
        messages: false,
        binary: false,
    };
    let stream = conn
        .start_replication(&slot, created.consistent_point, &options)
        .await
        .unwrap();
    let mut feed = Feed::new(stream, created.consistent_point);

    // A small transaction is not streamed and carries no xids.
    client
        .batch_execute("INSERT INTO big VALUES (0, 'small')")
        .await
        .unwrap();
    match feed.single().await {
        PgOutputMessage::Insert {
            xid: None,
            relation_id,
            new,
        } => {
            assert_eq!(relation_id, big);
            assert_eq!(cols(&new), ["0", "small"]);
        }
        other => panic!("expected a plain insert, got {other:?}"),
    }

    // ~1 MB in one transaction: far past 64kB, so it is streamed before it commits.
    const ROWS: usize = 5_000;
    client
        .batch_execute(&format!(
            "INSERT INTO big SELECT g, repeat('p', 200) FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
    let mut xid = None;
    let mut blocks = 0;
    let mut inserts = 0;
    let commit = loop {
        match feed.next().await {
            PgOutputMessage::StreamStart {
                xid: x,
                first_segment,
            } => {
                assert_eq!(first_segment, xid.is_none());
                assert!(xid.is_none_or(|prev| prev == x));
                xid = Some(x);
                blocks += 1;
                assert!(feed.decoder.in_stream());
            }
            PgOutputMessage::StreamStop => assert!(!feed.decoder.in_stream()),
            PgOutputMessage::Relation(r) => assert_eq!(r.xid, xid),
            PgOutputMessage::Insert { xid: x, .. } => {
                assert!(feed.decoder.in_stream());
                assert_eq!(x, xid);
                inserts += 1;
            }
            PgOutputMessage::StreamCommit {
                xid: x,
                commit_lsn,
                end_lsn,
                ..
            } => {
                assert_eq!(Some(x), xid);
                assert!(end_lsn > commit_lsn);
                break end_lsn;
            }
            other => panic!("unexpected in a streamed transaction: {other:?}"),
        }
    };
    assert!(blocks >= 1);
    assert_eq!(inserts, ROWS);

    // A large transaction rolled back: streamed, then aborted as a whole.
    client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO big SELECT g, repeat('q', 200) FROM generate_series({}, {}) g;
             ROLLBACK;
             INSERT INTO big VALUES (-1, 'marker');",
            ROWS + 1,
            2 * ROWS
        ))
        .await
        .unwrap();
    let mut aborted_xid = None;
    loop {
        match feed.next().await {
            PgOutputMessage::StreamStart { xid, .. } => aborted_xid = Some(xid),
            PgOutputMessage::StreamStop
            | PgOutputMessage::Relation(_)
            | PgOutputMessage::Insert { xid: Some(_), .. } => {}
            PgOutputMessage::StreamAbort { xid, subxid, .. } => {
                assert_eq!(Some(xid), aborted_xid);
                assert_eq!(subxid, xid);
                break;
            }
            other => panic!("unexpected in an aborted streamed transaction: {other:?}"),
        }
    }
    let marker = feed.txn().await;
    assert!(marker.commit_lsn > commit);
    match &marker.changes[..] {
        [PgOutputMessage::Insert { new, .. }] => assert_eq!(cols(new), ["-1", "marker"]),
        other => panic!("expected the marker, got {other:?}"),
    }

    // A temporary slot goes away with its connection.
    let conn = bounded("the stream to stop", feed.stream.stop())
        .await
        .unwrap();
    assert!(confirmed_flush(&client, &slot).await.is_some());
    conn.close().await.unwrap();
    eventually("the temporary slot to disappear", || async {
        client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .is_none()
    })
    .await;
}
