//! What Ferry keeps on the destination besides the replicated tables: schema `_ferry`, with
//!
//! - `_ferry.positions`: per mirror, the source position everything up to which is applied,
//!   written in the same transaction as the changes it covers;
//! - `_ferry.loaded_ranges`: per mirror, destination table (by OID) and range of the initial
//!   load, the rows that range loaded, written in the same transaction as those rows.
//!
//! A mirror is named by its name and its catalog id, so that a mirror dropped and created again
//! under the same name never reads the rows its predecessor left behind. The tables are created
//! on first use under an advisory lock, so that concurrent range loads do not race to create
//! them.

use ferry_core::{Error, ErrorKind, Lsn};
use tokio_postgres::Client;

use crate::db::{Db, MirrorId};

const CREATE: &str = "
SELECT pg_catalog.pg_advisory_xact_lock(7291463021);
CREATE SCHEMA IF NOT EXISTS _ferry;
CREATE TABLE IF NOT EXISTS _ferry.positions (
    mirror     text NOT NULL,
    mirror_id  int8 NOT NULL,
    lsn        pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mirror, mirror_id)
);
CREATE TABLE IF NOT EXISTS _ferry.loaded_ranges (
    mirror     text NOT NULL,
    mirror_id  int8 NOT NULL,
    table_oid  oid NOT NULL,
    range_no   int4 NOT NULL,
    rows       int8 NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mirror, mirror_id, table_oid, range_no)
);
CREATE TABLE IF NOT EXISTS _ferry.loaded_partitions (
    mirror       text NOT NULL,
    mirror_id    int8 NOT NULL,
    table_oid    oid NOT NULL,
    run          int8 NOT NULL,
    partition_no int4 NOT NULL,
    rows         int8 NOT NULL,
    loaded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mirror, mirror_id, table_oid, run, partition_no)
);";

/// Creates Ferry's tables unless they exist.
pub(crate) async fn ensure(db: &Db, client: &Client) -> Result<(), Error> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('_ferry.positions') IS NOT NULL
                AND pg_catalog.to_regclass('_ferry.loaded_ranges') IS NOT NULL
                AND pg_catalog.to_regclass('_ferry.loaded_partitions') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db.err())?
        .get(0);
    if exists {
        return Ok(());
    }
    let r = client
        .batch_execute(&format!("BEGIN; {CREATE} COMMIT"))
        .await;
    if r.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    r.map_err(db.err())
}

fn mirror(m: &MirrorId) -> Result<(&str, i64), Error> {
    match m.id {
        Some(id) => Ok((&m.name, id)),
        None => Err(Error::internal(format!(
            "mirror {} has no catalog id where the destination needs one",
            m.name
        ))),
    }
}

/// What a line of `_ferry.loaded_ranges` or `_ferry.loaded_partitions` records as loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// A range of the initial load.
    Range(i32),
    /// A partition of a query mirror's run.
    Partition { run: i64, partition: i32 },
}

/// The rows `what` loaded into table `table_oid`, when it is loaded.
pub(crate) async fn loaded(
    db: &Db,
    client: &Client,
    m: &MirrorId,
    table_oid: u32,
    what: Loaded,
) -> Result<Option<u64>, Error> {
    let (name, id) = mirror(m)?;
    let row = match what {
        Loaded::Range(range) => {
            client
                .query_opt(
                    "SELECT rows FROM _ferry.loaded_ranges
                     WHERE mirror = $1 AND mirror_id = $2 AND table_oid = $3 AND range_no = $4",
                    &[&name, &id, &table_oid, &range],
                )
                .await
        }
        Loaded::Partition { run, partition } => {
            client
                .query_opt(
                    "SELECT rows FROM _ferry.loaded_partitions
                     WHERE mirror = $1 AND mirror_id = $2 AND table_oid = $3 AND run = $4
                       AND partition_no = $5",
                    &[&name, &id, &table_oid, &run, &partition],
                )
                .await
        }
    }
    .map_err(db.err())?;
    Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
}

/// Records `what` as loaded into table `table_oid` (inside the transaction that loaded it).
pub(crate) async fn record(
    db: &Db,
    client: &Client,
    m: &MirrorId,
    table_oid: u32,
    what: Loaded,
    rows: u64,
) -> Result<(), Error> {
    let (name, id) = mirror(m)?;
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    match what {
        Loaded::Range(range) => client
            .execute(
                "INSERT INTO _ferry.loaded_ranges (mirror, mirror_id, table_oid, range_no, rows)
                     VALUES ($1, $2, $3, $4, $5)",
                &[&name, &id, &table_oid, &range, &rows],
            )
            .await,
        Loaded::Partition { run, partition } => {
            client
                .execute(
                    "INSERT INTO _ferry.loaded_partitions
                         (mirror, mirror_id, table_oid, run, partition_no, rows)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&name, &id, &table_oid, &run, &partition, &rows],
                )
                .await
        }
    }
    .map_err(db.err())?;
    Ok(())
}

/// Forgets the ranges of a table whose load is finished.
pub(crate) async fn forget_ranges(
    db: &Db,
    client: &Client,
    m: &MirrorId,
    table_oid: u32,
) -> Result<(), Error> {
    let (name, id) = mirror(m)?;
    client
        .execute(
            "DELETE FROM _ferry.loaded_ranges WHERE mirror = $1 AND mirror_id = $2 AND table_oid = $3",
            &[&name, &id, &table_oid],
        )
        .await
        .map_err(db.err())?;
    Ok(())
}

/// Forgets the partitions of the mirror's runs before `run` (they are done: the engine ends a
/// run before it starts the next).
pub(crate) async fn forget_partitions_before(
    db: &Db,
    client: &Client,
    m: &MirrorId,
    run: i64,
) -> Result<(), Error> {
    let (name, id) = mirror(m)?;
    client
        .execute(
            "DELETE FROM _ferry.loaded_partitions WHERE mirror = $1 AND mirror_id = $2 AND run < $3",
            &[&name, &id, &run],
        )
        .await
        .map_err(db.err())?;
    Ok(())
}

/// The mirror's stored position.
pub(crate) async fn position(db: &Db, client: &Client, m: &MirrorId) -> Result<Option<Lsn>, Error> {
    let (name, id) = mirror(m)?;
    let row = client
        .query_opt(
            "SELECT lsn::text FROM _ferry.positions WHERE mirror = $1 AND mirror_id = $2",
            &[&name, &id],
        )
        .await
        .map_err(db.err())?;
    row.map(|r| {
        r.get::<_, String>(0).parse::<Lsn>().map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                "XX000",
                format!("the destination holds an unreadable position: {e}"),
            )
        })
    })
    .transpose()
}

/// Stores the mirror's position (inside the transaction of the changes it covers).
pub(crate) async fn save_position(
    db: &Db,
    client: &Client,
    m: &MirrorId,
    lsn: Lsn,
) -> Result<(), Error> {
    let (name, id) = mirror(m)?;
    client
        .execute(
            "INSERT INTO _ferry.positions (mirror, mirror_id, lsn) VALUES ($1, $2, $3::text::pg_lsn)
             ON CONFLICT (mirror, mirror_id) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now()",
            &[&name, &id, &lsn.to_string()],
        )
        .await
        .map_err(db.err())?;
    Ok(())
}

/// Removes everything kept for the mirror (in the tables there are: a destination set up by
/// an older version may lack the later ones).
pub(crate) async fn forget(db: &Db, client: &Client, m: &MirrorId) -> Result<(), Error> {
    let (name, id) = mirror(m)?;
    for table in [
        "_ferry.positions",
        "_ferry.loaded_ranges",
        "_ferry.loaded_partitions",
    ] {
        let exists: bool = client
            .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map_err(db.err())?
            .get(0);
        if exists {
            client
                .execute(
                    &format!("DELETE FROM {table} WHERE mirror = $1 AND mirror_id = $2"),
                    &[&name, &id],
                )
                .await
                .map_err(db.err())?;
        }
    }
    Ok(())
}
