//! One partition of a query mirror's run loaded again after an interrupted attempt, against
//! each destination's own sink: what the earlier attempt left is replaced (ClickHouse) or was
//! never committed (PostgreSQL), and a partition is in the table once.

use ferry_clickhouse::ClickHouseDestination;
use ferry_core::destination::{
    Destination, Load, LoadSink, MirrorContext, QueryDestination, QueryPartition, QueryTable,
    TargetName, VersionSource,
};
use ferry_core::peer::{ClickhouseConfig, PostgresConfig};
use ferry_core::pgtype::{PgType, PgTypeDef};
use ferry_core::qrep::QueryMode;
use ferry_core::{ColumnSchema, ValueKind};
use ferry_e2e::{ChServer, Pg};

/// A ClickHouse destination for the test server's database `db`, as a mirror builds it.
fn clickhouse(db: &str) -> ClickHouseDestination {
    let ch = ChServer::from_env();
    let cfg = ClickhouseConfig {
        host: ch.host.clone(),
        port: ch.http_port,
        user: "default".into(),
        password: String::new(),
        database: db.to_owned(),
        disable_tls: true,
        ssl_root_cert: None,
        compression: None,
    };
    let context = MirrorContext {
        mirror: "t".into(),
        unrepresentable: Default::default(),
        layouts: Default::default(),
        meta_columns: Default::default(),
    };
    ClickHouseDestination::new(&cfg, context).unwrap()
}

/// A PostgreSQL destination for the test server's database `db`, for mirror id 1.
fn postgres(db: &str) -> ferry_pgdest::PgDestination {
    let pg = Pg::from_env();
    let cfg = PostgresConfig {
        host: pg.host.clone(),
        port: pg.port,
        user: pg.user.clone(),
        password: pg.password.clone(),
        database: db.to_owned(),
        ssl_mode: Default::default(),
        ssl_root_cert: None,
    };
    let id = ferry_pgdest::MirrorId {
        name: "t".into(),
        id: Some(1),
    };
    ferry_pgdest::PgDestination::new(&cfg, id, Default::default())
}

/// A result column; `sql` its PostgreSQL type (`bigint` or `text`).
fn column(name: &str, kind: ValueKind, nullable: bool) -> ColumnSchema {
    let (oid, type_name, sql) = match kind {
        ValueKind::Int64 => (20, "int8", "bigint"),
        _ => (25, "text", "text"),
    };
    ColumnSchema {
        name: name.into(),
        type_oid: oid,
        type_name: type_name.into(),
        kind,
        nullable,
        key_position: None,
        pg_type: Some(PgType {
            oid,
            schema: "pg_catalog".into(),
            name: type_name.into(),
            sql: sql.into(),
            collation: None,
            binary: true,
            def: PgTypeDef::Builtin,
        }),
    }
}

/// A binary COPY stream of `(id int8, note text)` rows.
fn copy_stream(rows: &[(i64, &str)]) -> bytes::Bytes {
    use ferry_core::binary_copy::write;
    let mut out = Vec::new();
    write::header(&mut out, 0, &[]);
    for (id, note) in rows {
        let id = id.to_be_bytes();
        write::tuple(&mut out, [Some(&id[..]), Some(note.as_bytes())]);
    }
    write::trailer(&mut out);
    out.into()
}

/// The same with a version column: `(id int8, note text, v int8)`.
fn versioned_stream(rows: &[(i64, &str, i64)]) -> bytes::Bytes {
    use ferry_core::binary_copy::write;
    let mut out = Vec::new();
    write::header(&mut out, 0, &[]);
    for (id, note, v) in rows {
        let (id, v) = (id.to_be_bytes(), v.to_be_bytes());
        write::tuple(
            &mut out,
            [Some(&id[..]), Some(note.as_bytes()), Some(&v[..])],
        );
    }
    write::trailer(&mut out);
    out.into()
}

fn partition(run: i64, partition: i32, attempt: i32) -> QueryPartition {
    QueryPartition {
        run,
        partition,
        attempt,
        version: 0,
    }
}

async fn open(
    q: &dyn QueryDestination,
    table: &QueryTable,
    p: QueryPartition,
) -> Box<dyn LoadSink> {
    match q.load_partition(table, &table.target, &p).await.unwrap() {
        Load::Sink(sink) => sink,
        Load::Done { .. } => panic!("partition {p:?} taken as done"),
    }
}

async fn write(
    q: &dyn QueryDestination,
    table: &QueryTable,
    p: QueryPartition,
    rows: bytes::Bytes,
) -> u64 {
    let mut sink = open(q, table, p).await;
    sink.write(rows).await.unwrap();
    sink.finish().await.unwrap().rows
}

/// A crash after ClickHouse took a partition's insert but before the catalog recorded it: the
/// next attempt (reading again, seeing fewer rows by then) replaces what the first left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_partition_written_again_replaces_what_an_earlier_attempt_left() {
    let db = ChServer::from_env().temp_database("ferry_qpart").await;
    let d = clickhouse(&db.name);
    let q = d.query().expect("ClickHouse holds query mirrors");
    let table = QueryTable {
        id: 0,
        target: TargetName::new(db.name.clone(), "t"),
        columns: vec![
            column("id", ValueKind::Int64, false),
            column("note", ValueKind::Text, true),
        ],
        mode: QueryMode::Append,
        version: VersionSource::Run,
    };
    q.check_query_table(&table, true).await.unwrap();
    q.create_query_table(&table, &table.target).await.unwrap();
    let rows = |r: &[(i64, &str)]| copy_stream(r);
    assert_eq!(
        write(
            q,
            &table,
            partition(7, 0, 0),
            rows(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")])
        )
        .await,
        4
    );
    assert_eq!(
        write(q, &table, partition(7, 1, 0), rows(&[(10, "x"), (11, "y")])).await,
        2
    );
    // Attempt 1 of partition 0: by now row 4 has left its range, row 2 changed. While it
    // writes, an insert of the interrupted attempt 0 lands late.
    let mut retry = open(q, &table, partition(7, 0, 1)).await;
    retry
        .write(rows(&[(1, "a"), (2, "B"), (3, "c")]))
        .await
        .unwrap();
    assert_eq!(
        write(q, &table, partition(7, 0, 0), rows(&[(4, "late")])).await,
        1
    );
    assert_eq!(retry.finish().await.unwrap().rows, 3);
    let sql = format!(
        "SELECT toString(count()) || ' ' || toString(sum(id)) || ' ' || arrayStringConcat(arraySort(groupArray(note)), '')
         FROM `{}`.t",
        db.name
    );
    let mut cursor = db.client().query(&sql).fetch_bytes("TSV").unwrap();
    let got = String::from_utf8(cursor.collect().await.unwrap().to_vec()).unwrap();
    assert_eq!(got.trim_end(), "5 27 Bacxy");
}

/// PostgreSQL: an attempt cut off before its commit leaves nothing; a partition committed is
/// recognised (and not read again); a later run forgets the earlier run's partitions; upsert
/// keeps the row of the highest version per key, within a partition and across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_partition_commits_once_with_its_record() {
    let db = Pg::from_env().temp_database("ferry_qpart").await;
    let d = postgres(&db.name);
    let q = d.query().expect("PostgreSQL holds query mirrors");
    let client = db.connect().await;
    let table = QueryTable {
        id: 0,
        target: TargetName::new("public", "t"),
        columns: vec![
            column("id", ValueKind::Int64, false),
            column("note", ValueKind::Text, true),
        ],
        mode: QueryMode::Append,
        version: VersionSource::Run,
    };
    q.check_query_table(&table, true).await.unwrap();
    q.create_query_table(&table, &table.target).await.unwrap();
    let rows = |r: &[(i64, &str)]| copy_stream(r);
    let seen = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .unwrap()
                .get::<_, Option<String>>(0)
                .unwrap_or_default()
        }
    };
    let contents =
        "SELECT count(*) || ' ' || sum(id) || ' ' || string_agg(note, '' ORDER BY note) FROM t";
    // Attempt 0 sends its rows and is cut off: nothing of it is in the table.
    let mut cut = open(q, &table, partition(7, 0, 0)).await;
    cut.write(rows(&[(1, "a"), (2, "b"), (4, "d")]))
        .await
        .unwrap();
    drop(cut);
    assert_eq!(seen("SELECT count(*)::text FROM t").await, "0");
    assert_eq!(
        write(
            q,
            &table,
            partition(7, 0, 1),
            rows(&[(1, "a"), (2, "B"), (3, "c")])
        )
        .await,
        3
    );
    assert_eq!(
        write(q, &table, partition(7, 1, 0), rows(&[(10, "x"), (11, "y")])).await,
        2
    );
    match q
        .load_partition(&table, &table.target, &partition(7, 0, 2))
        .await
        .unwrap()
    {
        Load::Done { rows } => assert_eq!(rows, 3),
        Load::Sink(_) => panic!("a committed partition was taken again"),
    }
    assert_eq!(seen(contents).await, "5 27 Bacxy");
    assert_eq!(
        seen("SELECT string_agg(run || ':' || partition_no, ' ' ORDER BY partition_no) FROM _ferry.loaded_partitions").await,
        "7:0 7:1"
    );
    // The next run's first partition forgets the earlier run's.
    assert_eq!(
        write(q, &table, partition(8, 0, 0), rows(&[(20, "z")])).await,
        1
    );
    assert_eq!(
        seen("SELECT string_agg(run || ':' || partition_no, ' ') FROM _ferry.loaded_partitions")
            .await,
        "8:0"
    );

    // Upsert, versioned by a column of the rows.
    let mut key = column("id", ValueKind::Int64, false);
    key.key_position = Some(1);
    let upsert = QueryTable {
        id: 0,
        target: TargetName::new("public", "u"),
        columns: vec![
            key,
            column("note", ValueKind::Text, true),
            column("v", ValueKind::Int64, false),
        ],
        mode: QueryMode::Upsert {
            unique_key: vec!["id".into()],
        },
        version: VersionSource::Column(2),
    };
    q.check_query_table(&upsert, true).await.unwrap();
    q.create_query_table(&upsert, &upsert.target).await.unwrap();
    let v = |r: &[(i64, &str, i64)]| versioned_stream(r);
    // Two rows of key 1 in one partition: the higher version stays.
    write(
        q,
        &upsert,
        partition(9, 0, 0),
        v(&[(1, "five", 5), (2, "two", 2), (1, "three", 3)]),
    )
    .await;
    // An older row does not replace a newer one; a newer one does.
    write(
        q,
        &upsert,
        partition(9, 1, 0),
        v(&[(1, "four", 4), (2, "six", 6), (3, "new", 1)]),
    )
    .await;
    assert_eq!(
        seen("SELECT string_agg(id || '=' || note || '@' || v, ' ' ORDER BY id) FROM u").await,
        "1=five@5 2=six@6 3=new@1"
    );
    assert_eq!(
        seen("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'u'::regclass AND contype = 'p'").await,
        "PRIMARY KEY (id)"
    );
}
