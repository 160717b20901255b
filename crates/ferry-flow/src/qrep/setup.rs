//! What `CREATE MIRROR … FOR $$query$$` checks and creates before it answers, and the query
//! as every run prepares it again.
//!
//! Everything is checked before anything is created: the watermark table and column (and the
//! column's type), the query (PostgreSQL prepares it as a partition runs it, so a syntax error,
//! a missing table or a query that is not a `SELECT` is reported now), the unique key among
//! its result columns, and the destination table ([`QueryDestination::check_query_table`]).
//! Then the mirror is stored, the destination table created when it is missing, and the
//! mirror is `running`; its first run starts at once, in the mirror's task.

use std::sync::Arc;

use ferry_catalog::NewTable;
use ferry_core::destination::{
    Destination, QueryDestination, QueryTable, TargetName, VersionSource,
};
use ferry_core::mirror::MirrorState;
use ferry_core::qrep::{QueryMode, QuerySpec, WatermarkKind, WatermarkSource};
use ferry_core::{ErrorKind, TableName, ValueKind};
use ferry_postgres::connect::connect;
use ferry_postgres::query::{watermark_kind, QueryColumn, SourceQuery};
use ferry_postgres::source;
use tokio_postgres::Client;
use tracing::info;

use crate::{peers, Engine, FlowError};

use super::CreateQueryMirror;

/// The query as the mirror runs it, and the destination's view of its table.
pub(crate) struct Prepared {
    pub query: SourceQuery,
    pub columns: Vec<QueryColumn>,
    pub table: QueryTable,
}

/// The destination of a query mirror, which must hold query mirrors.
pub(crate) fn query_destination(
    dest: &dyn Destination,
) -> Result<&dyn QueryDestination, FlowError> {
    dest.query().ok_or_else(|| {
        FlowError::new(
            ErrorKind::Unsupported,
            "0A000",
            format!(
                "{} cannot be the destination of a query mirror",
                dest.describe()
            ),
        )
    })
}

/// Whether a result column of this kind can carry a watermark of that kind.
fn same_kind(kind: WatermarkKind, value: &ValueKind) -> bool {
    matches!(
        (kind, value),
        (WatermarkKind::Int16, ValueKind::Int16)
            | (WatermarkKind::Int32, ValueKind::Int32)
            | (WatermarkKind::Int64, ValueKind::Int64)
            | (WatermarkKind::Date, ValueKind::Date)
            | (WatermarkKind::Timestamp, ValueKind::Timestamp)
            | (WatermarkKind::TimestampTz, ValueKind::TimestampTz)
    )
}

/// Describes the query at the source and builds its destination table: upsert's key marked
/// on its columns, and where upsert's versions come from.
pub(crate) async fn prepare(
    client: &Client,
    src: &ferry_core::peer::PostgresConfig,
    spec: &QuerySpec,
    kind: Option<WatermarkKind>,
    money_scale: u8,
    id: i64,
    target: TargetName,
) -> Result<Prepared, FlowError> {
    let template = ferry_sql::query::parse_query(&spec.query)
        .map_err(|e| FlowError::invalid("42601", format!("the query: {}", e.message)))?;
    let query = SourceQuery::new(&template, kind)?;
    let mut columns = query.describe(client, src, money_scale).await?;
    let o = &spec.options;
    for (position, key) in o.mode.unique_key().iter().enumerate() {
        let Some(c) = columns.iter_mut().find(|c| &c.schema.name == key) else {
            return Err(FlowError::new(
                ErrorKind::InvalidInput,
                "42703",
                format!("unique key column \"{key}\" is not among the query's result columns"),
            )
            .with_hint(format!(
                "The query returns: {}.",
                columns
                    .iter()
                    .map(|c| c.schema.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        c.schema.key_position = Some(position as u16 + 1);
    }
    let version = match (&o.mode, &o.watermark, kind) {
        (QueryMode::Upsert { .. }, Some(WatermarkSource::Column { column, .. }), Some(k)) => {
            columns
                .iter()
                .position(|c| &c.schema.name == column && same_kind(k, &c.schema.kind))
                .map_or(VersionSource::Run, VersionSource::Column)
        }
        _ => VersionSource::Run,
    };
    let table = QueryTable {
        id,
        target,
        columns: columns.iter().map(|c| c.schema.clone()).collect(),
        mode: o.mode.clone(),
        version,
    };
    Ok(Prepared {
        query,
        columns,
        table,
    })
}

/// The watermark's kind, from its table and column at the source; and the table the mirror's
/// row in the catalog names as its source (the watermark table, with its OID).
async fn watermark(
    client: &Client,
    src: &ferry_core::peer::PostgresConfig,
    spec: &QuerySpec,
    mirror: &str,
    money_scale: u8,
) -> Result<(Option<WatermarkKind>, TableName, u32), FlowError> {
    let Some(w) = &spec.options.watermark else {
        return Ok((None, TableName::new("query", mirror), 0));
    };
    let table = w.table();
    let described = source::describe_table(client, src, table, &[], money_scale)
        .await?
        .ok_or_else(|| {
            FlowError::new(
                ErrorKind::NotFound,
                "42P01",
                format!("watermark table {table} does not exist on the source"),
            )
            .with_hint("Name it in watermark_table_name as schema.table; an unqualified name means public.")
        })?;
    let kind = match w {
        WatermarkSource::Xmin { .. } => WatermarkKind::Xid,
        WatermarkSource::Column { column, .. } => {
            let c = described
                .columns
                .iter()
                .find(|c| &c.name == column)
                .ok_or_else(|| {
                    FlowError::new(
                        ErrorKind::InvalidInput,
                        "42703",
                        format!("column \"{column}\" of watermark table {table} does not exist"),
                    )
                })?;
            watermark_kind(c.type_oid).ok_or_else(|| {
                FlowError::new(
                    ErrorKind::InvalidInput,
                    "42804",
                    format!(
                        "watermark column \"{column}\" is of type {}; a watermark is an integer (smallint, integer, bigint), a date or a timestamp",
                        c.type_name
                    ),
                )
                .with_hint("Or use watermark_column = 'xmin' to pick rows by the transaction that wrote them.")
            })?
        }
    };
    Ok((Some(kind), table.clone(), described.oid))
}

/// Checks, stores and starts a query mirror. `Ok(false)` when it exists and `IF NOT EXISTS`
/// was given.
pub(crate) async fn create(
    engine: &Arc<Engine>,
    req: CreateQueryMirror,
) -> Result<bool, FlowError> {
    let exists = || {
        FlowError::new(
            ErrorKind::AlreadyExists,
            "42710",
            format!("mirror \"{}\" already exists", req.name),
        )
    };
    let catalog = &engine.catalog;
    if catalog.mirror(&req.name).await?.is_some() {
        return if req.if_not_exists {
            Ok(false)
        } else {
            Err(exists())
        };
    }
    let o = &req.spec.options;
    let src = peers::source_config(&req.source)?;
    let dest = peers::destination_for(&req.destination, &req.name, None, o.unrepresentable_values)?;
    let qdest = query_destination(dest.as_ref())?;

    let client = connect(&src, "ferry setup").await?;
    let money_scale = source::money_scale(&client, &src).await?;
    let (kind, source_table, source_oid) =
        watermark(&client, &src, &req.spec, &req.name, money_scale).await?;
    let target = TargetName::new(
        o.destination
            .database
            .clone()
            .unwrap_or_else(|| dest.default_namespace().to_owned()),
        o.destination.table.clone(),
    );
    let prepared = prepare(
        &client,
        &src,
        &req.spec,
        kind,
        money_scale,
        0,
        target.clone(),
    )
    .await?;
    drop(client);
    qdest
        .check_query_table(&prepared.table, o.setup_destination_table)
        .await?;

    let spec_json =
        serde_json::to_value(&req.spec).map_err(|e| FlowError::internal(e.to_string()))?;
    let columns = serde_json::to_value(&prepared.table.columns)
        .map_err(|e| FlowError::internal(e.to_string()))?;
    let new_table = NewTable {
        source: source_table,
        source_oid,
        destination_database: target.namespace.clone(),
        destination_table: target.table.clone(),
        columns,
        rows_estimated: 0,
    };
    let Some((id, _)) = catalog
        .insert_query_mirror(
            &req.name,
            req.source.id,
            req.destination.id,
            &spec_json,
            &new_table,
            kind,
        )
        .await?
    else {
        return if req.if_not_exists {
            Ok(false)
        } else {
            Err(exists())
        };
    };
    // Overwrite's first run creates the table as it swaps its result in: never empty.
    if o.mode != QueryMode::Overwrite {
        if let Err(e) = qdest.create_query_table(&prepared.table, &target).await {
            let _ = catalog.delete_mirror(id).await;
            return Err(e.context(format!("creating destination table {target}")));
        }
    }
    catalog
        .set_mirror_state(id, MirrorState::Running, None)
        .await?;
    info!(mirror = %req.name, destination = %target, mode = o.mode.as_str(), watermark = ?kind, "query mirror set up");
    let row = catalog
        .mirror(&req.name)
        .await?
        .ok_or_else(|| FlowError::internal("the mirror vanished from the catalog during setup"))?;
    engine.spawn(row, None).await?;
    Ok(true)
}
