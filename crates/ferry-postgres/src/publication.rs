//! What a mirror keeps on its source besides the slot's stream: its publication, dropping its
//! slot, and the few look-ups the stream needs (the WAL position, a domain's base type).

use std::time::Duration;

use ferry_core::ident::{pg_ident, pg_literal};
use ferry_core::peer::PostgresConfig;
use ferry_core::{Lsn, TableName};
use tokio_postgres::Client;
use tracing::info;

use crate::connect::{connect, SourceError};

/// What a publication Ferry creates covers.
pub enum PublicationScope<'a> {
    Tables(&'a [TableName]),
    /// Every table of these schemas, including tables created later (PostgreSQL 15+).
    Schemas(&'a [String]),
}

fn pg_err(cfg: &PostgresConfig) -> impl Fn(tokio_postgres::Error) -> SourceError + '_ {
    move |e| SourceError::from_pg(cfg, e)
}

/// The server's version number (`server_version_num`).
pub async fn server_version(client: &Client, cfg: &PostgresConfig) -> Result<i32, SourceError> {
    Ok(client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(pg_err(cfg))?
        .get(0))
}

/// Creates the publication unless one of that name exists; returns whether it created it.
/// Ferry's publications publish partitioned tables through their root.
pub async fn ensure_publication(
    client: &Client,
    cfg: &PostgresConfig,
    name: &str,
    scope: PublicationScope<'_>,
) -> Result<bool, SourceError> {
    let exists = client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(pg_err(cfg))?
        .get::<_, i64>(0)
        > 0;
    if exists {
        info!(publication = %name, "using the existing publication");
        return Ok(false);
    }
    let target = match scope {
        PublicationScope::Tables(tables) => {
            let list: Vec<String> = tables.iter().map(TableName::quoted).collect();
            format!("TABLE {}", list.join(", "))
        }
        PublicationScope::Schemas(schemas) => {
            let list: Vec<String> = schemas.iter().map(|s| pg_ident(s)).collect();
            format!("TABLES IN SCHEMA {}", list.join(", "))
        }
    };
    let sql = format!(
        "CREATE PUBLICATION {} FOR {target} WITH (publish_via_partition_root = true)",
        pg_ident(name)
    );
    client.batch_execute(&sql).await.map_err(pg_err(cfg))?;
    Ok(true)
}

/// Drops what a mirror created on its source, ignoring what is already gone. An active slot
/// (a walsender of a mirror task still closing) is dropped once it is free.
pub async fn drop_source_objects(
    cfg: &PostgresConfig,
    publication: Option<&str>,
    slot: Option<&str>,
) -> Result<(), SourceError> {
    let client = connect(cfg, "ferry cleanup").await?;
    if let Some(slot) = slot {
        let sql = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
            pg_literal(slot)
        );
        let mut attempt = 0;
        loop {
            match client.execute(&sql, &[]).await {
                Ok(_) => break,
                Err(e) if e.code().map(|c| c.code()) == Some("55006") && attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(SourceError::from_pg(cfg, e)),
            }
        }
    }
    if let Some(p) = publication {
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", pg_ident(p)))
            .await
            .map_err(pg_err(cfg))?;
    }
    Ok(())
}

/// The server's current WAL write position.
pub async fn current_wal_lsn(cfg: &PostgresConfig) -> Result<Lsn, SourceError> {
    let client = connect(cfg, "ferry position").await?;
    let text: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(pg_err(cfg))?
        .get(0);
    text.parse().map_err(|e| SourceError {
        kind: ferry_core::ErrorKind::Internal,
        sqlstate: "XX000".into(),
        message: format!("the source answered an unreadable WAL position: {e}"),
        hint: None,
        source: None,
    })
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    pub name: String,
    /// The oldest WAL the slot needs: the server keeps everything from here.
    pub restart_lsn: Option<Lsn>,
    /// What the slot's consumer confirmed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13 and later).
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before the slot is at risk of being lost,
    /// under `max_slot_wal_keep_size` (NULL when unlimited).
    pub safe_wal_size: Option<i64>,
    /// Whether a connection is reading it.
    pub active: bool,
}

/// The server's WAL end and those of `slots` that exist, read in one statement (on a
/// connection the caller keeps, since this is sampled every few seconds).
pub async fn sample_slots(
    client: &Client,
    cfg: &PostgresConfig,
    slots: &[String],
) -> Result<(Lsn, Vec<SlotStatus>), SourceError> {
    // to_jsonb(s) reads the columns PostgreSQL 13 added as NULL on older servers.
    let rows = client
        .query(
            "SELECT pg_current_wal_lsn()::text, s.slot_name::text, s.restart_lsn::text,
                    s.confirmed_flush_lsn::text, to_jsonb(s) ->> 'wal_status',
                    (to_jsonb(s) ->> 'safe_wal_size')::int8, coalesce(s.active, false)
             FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = ANY($1)",
            &[&slots],
        )
        .await
        .map_err(pg_err(cfg))?;
    let unreadable = |e: ferry_core::lsn::ParseLsnError| SourceError {
        kind: ferry_core::ErrorKind::Internal,
        sqlstate: "XX000".into(),
        message: format!("the source answered an unreadable WAL position: {e}"),
        hint: None,
        source: None,
    };
    let lsn = |t: Option<String>| t.map(|t| t.parse::<Lsn>()).transpose().map_err(unreadable);
    let mut current = Lsn::ZERO;
    let mut found = Vec::new();
    for r in &rows {
        current = lsn(Some(r.get(0)))?.unwrap_or(Lsn::ZERO);
        let Some(name) = r.get::<_, Option<String>>(1) else {
            continue;
        };
        found.push(SlotStatus {
            name,
            restart_lsn: lsn(r.get(2))?,
            confirmed_flush_lsn: lsn(r.get(3))?,
            wal_status: r.get(4),
            safe_wal_size: r.get(5),
            active: r.get(6),
        });
    }
    Ok((current, found))
}

/// The base type of a domain (through domains over domains); any other type itself.
pub async fn base_type(cfg: &PostgresConfig, oid: u32) -> Result<u32, SourceError> {
    let client = connect(cfg, "ferry type lookup").await?;
    let row = client
        .query_one(
            "WITH RECURSIVE walk(oid, typtype, typbasetype) AS (
                 SELECT oid, typtype, typbasetype FROM pg_type WHERE oid = $1
                 UNION ALL
                 SELECT t.oid, t.typtype, t.typbasetype FROM pg_type t JOIN walk w ON t.oid = w.typbasetype
                 WHERE w.typtype = 'd')
             SELECT coalesce((SELECT oid FROM walk WHERE typtype <> 'd' LIMIT 1), $1)",
            &[&oid],
        )
        .await
        .map_err(pg_err(cfg))?;
    Ok(row.get(0))
}

/// Whether a slot exists and can still give changes: `None` when it does not exist, else
/// whether its WAL is still there (`wal_status` is not `lost`).
pub async fn slot_usable(cfg: &PostgresConfig, slot: &str) -> Result<Option<bool>, SourceError> {
    let client = connect(cfg, "ferry slot check").await?;
    let row = client
        .query_opt(
            "SELECT coalesce(wal_status, '') <> 'lost' FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg_err(cfg))?;
    Ok(row.map(|r| r.get(0)))
}

/// Makes sure a publication Ferry created publishes `table` (a table dropped and created
/// again leaves a `FOR TABLE` publication). A publication of whole schemas covers it already.
pub async fn add_table(
    cfg: &PostgresConfig,
    publication: &str,
    table: &TableName,
) -> Result<(), SourceError> {
    let client = connect(cfg, "ferry publication").await?;
    // Publications of whole schemas exist from PostgreSQL 15 on.
    let schemas = if server_version(&client, cfg).await? >= 150000 {
        "EXISTS (SELECT 1 FROM pg_publication_namespace pn
                 JOIN pg_publication p ON p.oid = pn.pnpubid
                 JOIN pg_namespace n ON n.oid = pn.pnnspid
                 WHERE p.pubname = $1 AND n.nspname = $2)"
    } else {
        "false AND $2 IS NOT NULL"
    };
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT puballtables FROM pg_publication WHERE pubname = $1),
                        EXISTS (SELECT 1 FROM pg_publication_tables
                                WHERE pubname = $1 AND schemaname = $2 AND tablename = $3),
                        {schemas}"
            ),
            &[&publication, &table.schema, &table.name],
        )
        .await
        .map_err(pg_err(cfg))?;
    let all: Option<bool> = row.get(0);
    let member: bool = row.get(1);
    let schema: bool = row.get(2);
    if all == Some(true) || member || schema {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            pg_ident(publication),
            table.quoted()
        ))
        .await
        .map_err(pg_err(cfg))?;
    info!(publication = %publication, table = %table, "table added to the publication");
    Ok(())
}

/// The tables among `tables` that publication `name` does not publish; `None` when there is
/// no publication of that name.
pub async fn unpublished(
    client: &Client,
    cfg: &PostgresConfig,
    name: &str,
    tables: &[TableName],
) -> Result<Option<Vec<TableName>>, SourceError> {
    let exists = client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(pg_err(cfg))?
        .get::<_, i64>(0)
        > 0;
    if !exists {
        return Ok(None);
    }
    // pg_publication_tables lists a partitioned table's leaves instead of the table when the
    // publication does not publish through the root: either counts as published.
    let rows = client
        .query(
            "SELECT p.schemaname::text, p.tablename::text FROM pg_publication_tables p
             WHERE p.pubname = $1
             UNION
             SELECT n.nspname::text, c.relname::text
             FROM pg_publication_tables p
             JOIN pg_namespace pn ON pn.nspname = p.schemaname
             JOIN pg_class leaf ON leaf.relname = p.tablename AND leaf.relnamespace = pn.oid
             JOIN pg_inherits i ON i.inhrelid = leaf.oid
             JOIN pg_class c ON c.oid = i.inhparent
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE p.pubname = $1",
            &[&name],
        )
        .await
        .map_err(pg_err(cfg))?;
    let published: std::collections::HashSet<TableName> = rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok(Some(
        tables
            .iter()
            .filter(|t| !published.contains(*t))
            .cloned()
            .collect(),
    ))
}

/// Makes a publication of named tables stop publishing `table` (a publication of whole
/// schemas, or one that does not publish it, is left as it is).
pub async fn drop_table(
    cfg: &PostgresConfig,
    publication: &str,
    table: &TableName,
) -> Result<(), SourceError> {
    let client = connect(cfg, "ferry publication").await?;
    let named = client
        .query_one(
            "SELECT count(*) FROM pg_publication_rel pr
             JOIN pg_publication p ON p.oid = pr.prpubid
             JOIN pg_class c ON c.oid = pr.prrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE p.pubname = $1 AND n.nspname = $2 AND c.relname = $3",
            &[&publication, &table.schema, &table.name],
        )
        .await
        .map_err(pg_err(cfg))?
        .get::<_, i64>(0)
        > 0;
    if named {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} DROP TABLE {}",
                pg_ident(publication),
                table.quoted()
            ))
            .await
            .map_err(pg_err(cfg))?;
    }
    Ok(())
}
