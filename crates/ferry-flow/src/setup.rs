//! Setting a mirror up: everything `CREATE MIRROR` checks and creates before it answers.
//!
//! Order matters, so that a failure at any step leaves nothing behind:
//! 1. check the source (`wal_level`, privileges, free slots) and every table (exists, has a
//!    key or `REPLICA IDENTITY FULL`, every column mapped) and the destination (no table of
//!    that name yet) — nothing is created until all of this passed;
//! 2. store the mirror in the catalog (state `setting_up`);
//! 3. create the publication (unless the user named one that exists), then the slot with its
//!    exported snapshot on a replication connection, then the destination tables;
//! 4. set the state to `snapshot` and hand the replication connection, which keeps the
//!    snapshot alive, to the mirror's task.
//!
//! If step 2 or 3 fails, what was created is dropped again, in reverse order.

use std::collections::HashSet;

use ferry_catalog::{Catalog, NewTable, StoredPeer};
use ferry_clickhouse::table::Destination;
use ferry_core::ident::{pg_ident, pg_literal};
use ferry_core::mirror::{Mapping, MirrorSpec};
use ferry_core::peer::{ClickhouseConfig, PeerConfig, PostgresConfig};
use ferry_core::{ErrorKind, TableName};
use ferry_postgres::connect::connect;
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::source::{self, SourceTable};
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::FlowError;

/// One table of a mirror as planned.
pub struct PlannedTable {
    pub source: SourceTable,
    pub destination_database: String,
    pub destination_table: String,
}

/// What a new mirror will copy.
pub struct Plan {
    pub tables: Vec<PlannedTable>,
}

/// The peers' typed settings, checked for their roles.
pub fn peer_configs(
    source: &StoredPeer,
    destination: &StoredPeer,
) -> Result<(PostgresConfig, ClickhouseConfig), FlowError> {
    let src = match &source.config {
        PeerConfig::Postgres(c) => c.clone(),
        other => {
            return Err(FlowError::invalid(
                "42809",
                format!(
                    "peer \"{}\" is a {} peer; a mirror's source must be a POSTGRES peer",
                    source.name,
                    other.kind()
                ),
            ))
        }
    };
    let dst = match &destination.config {
        PeerConfig::Clickhouse(c) => c.clone(),
        other => {
            return Err(FlowError::invalid(
                "42809",
                format!(
                    "peer \"{}\" is a {} peer; a mirror's destination must be a CLICKHOUSE peer",
                    destination.name,
                    other.kind()
                ),
            ))
        }
    };
    Ok((src, dst))
}

/// The source tables a mapping names, with their destinations, expanded and de-duplicated.
async fn resolve_mapping(
    client: &Client,
    cfg: &PostgresConfig,
    mapping: &Mapping,
    default_db: &str,
) -> Result<Vec<(TableName, String, String, Vec<String>)>, FlowError> {
    let mut out = Vec::new();
    match mapping {
        Mapping::Tables(entries) => {
            for e in entries {
                let db = e
                    .destination
                    .database
                    .clone()
                    .unwrap_or_else(|| default_db.to_owned());
                out.push((
                    e.source.clone(),
                    db,
                    e.destination.table.clone(),
                    e.exclude.clone(),
                ));
            }
        }
        Mapping::Schemas(pairs) => {
            for (schema, db) in pairs {
                if !source::schema_exists(client, cfg, schema).await? {
                    return Err(FlowError::new(
                        ErrorKind::NotFound,
                        "3F000",
                        format!("schema \"{schema}\" does not exist on the source"),
                    ));
                }
                for t in source::tables_in_schema(client, cfg, schema).await? {
                    let name = t.name.clone();
                    out.push((t, db.clone(), name, Vec::new()));
                }
            }
        }
    }
    let mut sources = HashSet::new();
    let mut destinations = HashSet::new();
    for (src, db, table, _) in &out {
        if !sources.insert(src.clone()) {
            return Err(FlowError::invalid(
                "42710",
                format!("table {src} is mapped more than once"),
            ));
        }
        if !destinations.insert((db.clone(), table.clone())) {
            return Err(FlowError::invalid(
                "42710",
                format!("destination table {db}.{table} is the target of more than one table"),
            ));
        }
    }
    if out.is_empty() {
        return Err(
            FlowError::invalid("22023", "the mirror has no tables to copy")
                .with_hint("The schema mapping found no tables."),
        );
    }
    Ok(out)
}

/// Checks everything a new mirror needs; creates nothing.
pub async fn plan(
    mirror: &str,
    src_cfg: &PostgresConfig,
    dest: &Destination,
    spec: &MirrorSpec,
) -> Result<Plan, FlowError> {
    let (_, slot) = mirror_names(mirror, spec);
    ferry_postgres::replication::validate_slot_name(&slot).map_err(|e| {
        FlowError::from(e).with_hint("Name the slot with replication_slot_name: lower-case letters, digits and _, at most 63.")
    })?;
    let client = connect(src_cfg, "ferry setup").await?;
    source::check_replication(&client, src_cfg, 1).await?;
    let money_scale = source::money_scale(&client, src_cfg).await?;
    let entries = resolve_mapping(&client, src_cfg, &spec.mapping, dest.default_database()).await?;
    let mut tables = Vec::with_capacity(entries.len());
    for (name, db, table, exclude) in entries {
        let Some(t) =
            source::describe_table(&client, src_cfg, &name, &exclude, money_scale).await?
        else {
            return Err(FlowError::new(
                ErrorKind::NotFound,
                "42P01",
                format!("table {name} does not exist on the source"),
            )
            .with_hint("Name it as schema.table; an unqualified name means public."));
        };
        if !t.has_identity() {
            return Err(
                FlowError::invalid("55000", format!("table {name} has no primary key")).with_hint(
                    format!(
                        "Add a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL.",
                        name.quoted()
                    ),
                ),
            );
        }
        if t.columns.is_empty() {
            return Err(FlowError::invalid(
                "22023",
                format!("table {name} has no columns to copy"),
            ));
        }
        if dest.database_exists(&db).await? && dest.table_exists(&db, &table).await? {
            return Err(FlowError::new(
                ErrorKind::AlreadyExists,
                "42P07",
                format!("destination table {db}.{table} already exists"),
            )
            .with_hint("Drop it in ClickHouse, or map the source table to another name."));
        }
        tables.push(PlannedTable {
            source: t,
            destination_database: db,
            destination_table: table,
        });
    }
    Ok(Plan { tables })
}

/// The publication and slot names of a new mirror: the ones its options give, or
/// `ferry_<mirror>_pub` and `ferry_<mirror>_<random>` (slots are shared by every database of a
/// server, so Ferry's own slot names never collide with another mirror's, even one of another
/// Ferry with the same mirror name).
pub fn mirror_names(mirror: &str, spec: &MirrorSpec) -> (String, String) {
    let clean: String = mirror
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let publication = spec
        .options
        .publication_name
        .clone()
        .unwrap_or_else(|| format!("ferry_{clean}_pub"));
    let slot = spec
        .options
        .slot_name
        .clone()
        .unwrap_or_else(|| format!("ferry_{clean}_{:08x}", rand::random::<u32>()));
    (publication, slot)
}

/// Creates the publication unless one of that name exists; returns whether it created it.
/// What a publication Ferry creates covers.
pub enum PublicationScope<'a> {
    Tables(&'a [TableName]),
    /// Every table of these schemas, including tables created later (PostgreSQL 15+).
    Schemas(&'a [String]),
}

/// The scope of a mirror's publication: whole schemas for a schema mapping where the server
/// can (so that tables created later are published too), else the tables.
pub async fn publication_scope<'a>(
    client: &Client,
    cfg: &PostgresConfig,
    mapping: &'a Mapping,
    schemas: &'a mut Vec<String>,
    tables: &'a [TableName],
) -> Result<PublicationScope<'a>, FlowError> {
    if let Mapping::Schemas(pairs) = mapping {
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(|e| ferry_postgres::connect::SourceError::from_pg(cfg, e))?
            .get(0);
        if version >= 150000 {
            *schemas = pairs.iter().map(|(s, _)| s.clone()).collect();
            return Ok(PublicationScope::Schemas(schemas));
        }
    }
    Ok(PublicationScope::Tables(tables))
}

pub async fn ensure_publication(
    client: &Client,
    cfg: &PostgresConfig,
    name: &str,
    scope: PublicationScope<'_>,
) -> Result<bool, FlowError> {
    let exists = client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| ferry_postgres::connect::SourceError::from_pg(cfg, e))?
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
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| ferry_postgres::connect::SourceError::from_pg(cfg, e))?;
    Ok(true)
}

/// Drops what a mirror created on its source, ignoring what is already gone.
pub async fn drop_source_objects(
    cfg: &PostgresConfig,
    publication: Option<&str>,
    slot: Option<&str>,
) -> Result<(), FlowError> {
    let client = connect(cfg, "ferry cleanup").await?;
    if let Some(slot) = slot {
        // An active slot (a connection of a mirror task still closing) is dropped once free.
        for attempt in 0..50 {
            let r = client
                .execute(
                    &format!(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
                        pg_literal(slot)
                    ),
                    &[],
                )
                .await;
            match r {
                Ok(_) => break,
                Err(e) if e.code().map(|c| c.code()) == Some("55006") && attempt < 49 => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(ferry_postgres::connect::SourceError::from_pg(cfg, e).into()),
            }
        }
    }
    if let Some(p) = publication {
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", pg_ident(p)))
            .await
            .map_err(|e| ferry_postgres::connect::SourceError::from_pg(cfg, e))?;
    }
    Ok(())
}

/// What setting a mirror up produced.
pub struct SetUp {
    pub mirror_id: i64,
    /// Holds the exported snapshot until the initial load no longer needs it.
    pub replication: ReplicationConnection,
    pub snapshot_name: Option<String>,
}

/// Steps 2–4 of the module doc; undoes its own work when a step fails.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    catalog: &Catalog,
    name: &str,
    source: &StoredPeer,
    destination: &StoredPeer,
    src_cfg: &PostgresConfig,
    dest: &Destination,
    spec: &MirrorSpec,
    plan: &Plan,
) -> Result<Option<SetUp>, FlowError> {
    let (publication, slot) = mirror_names(name, spec);
    let tables: Vec<NewTable> = plan
        .tables
        .iter()
        .map(|t| NewTable {
            source: t.source.name.clone(),
            source_oid: t.source.oid,
            destination_database: t.destination_database.clone(),
            destination_table: t.destination_table.clone(),
            columns: serde_json::to_value(&t.source.columns).unwrap_or_default(),
            rows_estimated: t.source.estimated_rows() as i64,
        })
        .collect();
    let spec_json = serde_json::to_value(spec).map_err(|e| FlowError::internal(e.to_string()))?;
    let client = connect(src_cfg, "ferry setup").await?;
    let source_names: Vec<TableName> = plan.tables.iter().map(|t| t.source.name.clone()).collect();
    let created_publication = {
        let mut schemas = Vec::new();
        let scope =
            publication_scope(&client, src_cfg, &spec.mapping, &mut schemas, &source_names).await?;
        ensure_publication(&client, src_cfg, &publication, scope).await?
    };
    let undo_publication = created_publication.then_some(publication.as_str());

    let id = match catalog
        .insert_mirror(
            name,
            source.id,
            destination.id,
            &spec_json,
            &publication,
            created_publication,
            &slot,
            &tables,
        )
        .await
    {
        Ok(Some(id)) => id,
        Ok(None) => {
            let _ = drop_source_objects(src_cfg, undo_publication, None).await;
            return Ok(None);
        }
        Err(e) => {
            let _ = drop_source_objects(src_cfg, undo_publication, None).await;
            return Err(e.into());
        }
    };

    let result = async {
        let mut repl = ReplicationConnection::connect(src_cfg).await?;
        let created = repl.create_slot(&slot, false).await?;
        Ok::<_, FlowError>((repl, created))
    }
    .await;
    let (repl, created) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = catalog.delete_mirror(id).await;
            let _ = drop_source_objects(src_cfg, undo_publication, None).await;
            return Err(e);
        }
    };

    let mut made: Vec<(String, String)> = Vec::new();
    for t in &plan.tables {
        let r = async {
            dest.ensure_database(&t.destination_database).await?;
            dest.create_table(
                &t.destination_database,
                &t.destination_table,
                &t.source.columns,
            )
            .await
        }
        .await;
        if let Err(e) = r {
            for (db, table) in &made {
                let _ = dest
                    .execute(&format!(
                        "DROP TABLE IF EXISTS {}",
                        ferry_core::ident::ch_qualified(db, table)
                    ))
                    .await;
            }
            drop(repl);
            let _ = catalog.delete_mirror(id).await;
            if let Err(cleanup) = drop_source_objects(src_cfg, undo_publication, Some(&slot)).await
            {
                warn!(mirror = %name, error = %cleanup, "could not drop the slot after a failed setup");
            }
            return Err(FlowError::from(e).context(format!(
                "creating destination table {}.{}",
                t.destination_database, t.destination_table
            )));
        }
        made.push((t.destination_database.clone(), t.destination_table.clone()));
    }
    catalog
        .set_mirror_snapshot(id, &created.consistent_point.to_string())
        .await?;
    info!(mirror = %name, slot = %slot, publication = %publication, lsn = %created.consistent_point, "mirror set up");
    Ok(Some(SetUp {
        mirror_id: id,
        replication: repl,
        snapshot_name: created.snapshot_name,
    }))
}
