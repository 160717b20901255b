//! Setting a mirror up: everything `CREATE MIRROR` checks and creates before it answers.
//!
//! Order matters, so that a failure at any step leaves nothing behind:
//! 1. check the source (`wal_level`, privileges, free slots) and every table (exists, has a
//!    key or `REPLICA IDENTITY FULL`, every column mapped) and the destination
//!    ([`Destination::check`]: namespaces exist, no table of that name, every column can be
//!    held) — nothing is created until all of this passed;
//! 2. store the mirror in the catalog (state `setting_up`);
//! 3. create the publication (unless the user named one that exists), then the slot with its
//!    exported snapshot on a replication connection, then the destination tables;
//! 4. set the state to `snapshot` and hand the replication connection, which keeps the
//!    snapshot alive, to the mirror's task.
//!
//! If step 2 or 3 fails, what was created is dropped again, in reverse order.

use std::collections::HashSet;

use ferry_catalog::{Catalog, NewTable, StoredPeer};
use ferry_core::destination::{Destination, TableSpec, TargetName};
use ferry_core::mirror::{Mapping, MirrorSpec};
use ferry_core::peer::PostgresConfig;
use ferry_core::{ErrorKind, TableName};
use ferry_postgres::connect::connect;
use ferry_postgres::publication::{self, PublicationScope};
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::source::{self, SourceTable};
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::FlowError;

/// One table of a mirror as planned.
pub struct PlannedTable {
    pub source: SourceTable,
    pub spec: TableSpec,
}

/// What a new mirror will copy.
pub struct Plan {
    pub tables: Vec<PlannedTable>,
}

/// The source tables a mapping names, with their destinations, expanded and de-duplicated.
async fn resolve_mapping(
    client: &Client,
    cfg: &PostgresConfig,
    mapping: &Mapping,
    default_namespace: &str,
) -> Result<Vec<(TableName, TargetName, Vec<String>)>, FlowError> {
    let mut out = Vec::new();
    match mapping {
        Mapping::Tables(entries) => {
            for e in entries {
                let namespace = e
                    .destination
                    .database
                    .clone()
                    .unwrap_or_else(|| default_namespace.to_owned());
                out.push((
                    e.source.clone(),
                    TargetName::new(namespace, e.destination.table.clone()),
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
                    out.push((t, TargetName::new(db.clone(), name), Vec::new()));
                }
            }
        }
    }
    let mut sources = HashSet::new();
    let mut destinations = HashSet::new();
    for (src, target, _) in &out {
        if !sources.insert(src.clone()) {
            return Err(FlowError::invalid(
                "42710",
                format!("table {src} is mapped more than once"),
            ));
        }
        if !destinations.insert(target.clone()) {
            return Err(FlowError::invalid(
                "42710",
                format!("destination table {target} is the target of more than one table"),
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
    dest: &dyn Destination,
    spec: &MirrorSpec,
) -> Result<Plan, FlowError> {
    let (_, slot) = mirror_names(mirror, spec);
    ferry_postgres::replication::validate_slot_name(&slot).map_err(|e| {
        FlowError::from(e).with_hint("Name the slot with replication_slot_name: lower-case letters, digits and _, at most 63.")
    })?;
    let client = connect(src_cfg, "ferry setup").await?;
    source::check_replication(&client, src_cfg, 1).await?;
    let money_scale = source::money_scale(&client, src_cfg).await?;
    let entries =
        resolve_mapping(&client, src_cfg, &spec.mapping, dest.default_namespace()).await?;
    let tables = plan_tables(
        &client,
        src_cfg,
        dest,
        entries,
        money_scale,
        &spec.layouts(),
    )
    .await?;
    // A publication the user named must publish every table, or their changes never come.
    let (publication, _) = mirror_names(mirror, spec);
    let names: Vec<TableName> = tables.iter().map(|t| t.spec.source.clone()).collect();
    check_published(src_cfg, &publication, &names).await?;
    Ok(Plan { tables })
}

/// Refuses tables a publication that exists does not publish, naming them.
pub async fn check_published(
    cfg: &PostgresConfig,
    publication: &str,
    tables: &[TableName],
) -> Result<(), FlowError> {
    let client = connect(cfg, "ferry publication check").await?;
    if let Some(missing) = publication::unpublished(&client, cfg, publication, tables).await? {
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
            return Err(FlowError::new(
                ErrorKind::Misconfigured,
                "55000",
                format!(
                    "publication \"{publication}\" does not publish {}",
                    list.join(", ")
                ),
            )
            .with_hint(format!(
                "Run ALTER PUBLICATION {} ADD TABLE {} on the source, or leave publication_name out and Ferry makes its own.",
                ferry_core::ident::pg_ident(publication),
                missing
                    .iter()
                    .map(TableName::quoted)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// Checks tables a mirror is to copy (they exist, can be replicated, and the destination can
/// hold them, laid out as `layouts` says), and describes them; creates nothing.
pub async fn plan_tables(
    client: &Client,
    src_cfg: &PostgresConfig,
    dest: &dyn Destination,
    entries: Vec<(TableName, TargetName, Vec<String>)>,
    money_scale: u8,
    layouts: &ferry_core::layout::Layouts,
) -> Result<Vec<PlannedTable>, FlowError> {
    let mut tables = Vec::with_capacity(entries.len());
    let mut sorted_beyond_key: Vec<(TableName, Vec<String>)> = Vec::new();
    for (name, target, exclude) in entries {
        let Some(t) = source::describe_table(client, src_cfg, &name, &exclude, money_scale).await?
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
        // Sorting by columns beyond the key needs whole old rows (checked below).
        if let Some(order) = &layouts.of(&name).order_by {
            let beyond: Vec<String> = order
                .iter()
                .filter(|o| {
                    t.columns
                        .iter()
                        .any(|c| c.key_position.is_none() && c.name.eq_ignore_ascii_case(o))
                })
                .cloned()
                .collect();
            if !beyond.is_empty() && t.replica_identity != 'f' {
                sorted_beyond_key.push((name.clone(), beyond));
            }
        }
        let spec = TableSpec {
            id: 0,
            source: name,
            target,
            columns: t.columns.clone(),
        };
        tables.push(PlannedTable { source: t, spec });
    }
    let specs: Vec<TableSpec> = tables.iter().map(|t| t.spec.clone()).collect();
    dest.check(&specs).await?;
    // A table sorted by columns beyond its key (order_by) keeps one row per sort value: a
    // deletion or a change of those columns must carry the row's old values of them, which
    // the source sends only with REPLICA IDENTITY FULL.
    if let Some((name, beyond)) = sorted_beyond_key.first() {
        return Err(FlowError::invalid(
            "55000",
            format!(
                "order_by of table {name} sorts by {} beyond its key, which deletions carry only with REPLICA IDENTITY FULL",
                beyond.join(", ")
            ),
        )
        .with_hint(format!(
            "Run ALTER TABLE {} REPLICA IDENTITY FULL at the source, or sort by the key columns alone.",
            name.quoted()
        )));
    }
    Ok(tables)
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

/// Creates the mirror's publication unless one of that name exists: whole schemas for a
/// schema mapping where the server can (so that tables created later are published too), else
/// the tables. Returns whether it was created.
pub async fn ensure_publication(
    cfg: &PostgresConfig,
    name: &str,
    mapping: &Mapping,
    tables: &[TableName],
) -> Result<bool, FlowError> {
    let client = connect(cfg, "ferry setup").await?;
    let schemas: Vec<String> = match mapping {
        Mapping::Schemas(pairs) if publication::server_version(&client, cfg).await? >= 150000 => {
            pairs.iter().map(|(s, _)| s.clone()).collect()
        }
        _ => Vec::new(),
    };
    let scope = if schemas.is_empty() {
        PublicationScope::Tables(tables)
    } else {
        PublicationScope::Schemas(&schemas)
    };
    Ok(publication::ensure_publication(&client, cfg, name, scope).await?)
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
    dest: &dyn Destination,
    spec: &MirrorSpec,
    plan: &Plan,
) -> Result<Option<SetUp>, FlowError> {
    let (publication, slot) = mirror_names(name, spec);
    let mut tables = Vec::with_capacity(plan.tables.len());
    for t in &plan.tables {
        tables.push(NewTable {
            source: t.spec.source.clone(),
            source_oid: t.source.oid,
            destination_database: t.spec.target.namespace.clone(),
            destination_table: t.spec.target.table.clone(),
            columns: serde_json::to_value(&t.spec.columns)
                .map_err(|e| FlowError::internal(e.to_string()))?,
            rows_estimated: t.source.estimated_rows() as i64,
        });
    }
    let spec_json = serde_json::to_value(spec).map_err(|e| FlowError::internal(e.to_string()))?;
    let source_names: Vec<TableName> = plan.tables.iter().map(|t| t.spec.source.clone()).collect();
    let created_publication =
        ensure_publication(src_cfg, &publication, &spec.mapping, &source_names).await?;
    let undo_publication = created_publication.then_some(publication.as_str());
    let undo_source = |slot: Option<&str>| {
        let slot = slot.map(str::to_owned);
        async move {
            if let Err(e) =
                publication::drop_source_objects(src_cfg, undo_publication, slot.as_deref()).await
            {
                warn!(mirror = %name, error = %e, "could not undo the source objects of a failed setup");
            }
        }
    };

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
            undo_source(None).await;
            return Ok(None);
        }
        Err(e) => {
            undo_source(None).await;
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
            undo_source(None).await;
            return Err(e);
        }
    };

    let mut made: Vec<TargetName> = Vec::new();
    for t in &plan.tables {
        if let Err(e) = dest.create_table(&t.spec, &t.spec.target).await {
            for target in &made {
                let _ = dest.drop_table(target).await;
            }
            drop(repl);
            let _ = catalog.delete_mirror(id).await;
            undo_source(Some(&slot)).await;
            return Err(e.context(format!("creating destination table {}", t.spec.target)));
        }
        made.push(t.spec.target.clone());
    }
    catalog
        .set_mirror_snapshot(id, created.consistent_point)
        .await?;
    info!(mirror = %name, slot = %slot, publication = %publication, lsn = %created.consistent_point, "mirror set up");
    Ok(Some(SetUp {
        mirror_id: id,
        replication: repl,
        snapshot_name: created.snapshot_name,
    }))
}
