//! `ALTER MIRROR`: changing a mirror while it runs.
//!
//! - `ADD TABLE MAPPING (…)` checks the new tables as `CREATE MIRROR` does, adds them to a
//!   publication Ferry made (a publication the user named must publish them already), and
//!   records them `syncing`: each is loaded on its own from a snapshot of its own and joins the
//!   stream exactly there (see [`crate::sync`]) while the other tables stream on.
//! - `DROP TABLE MAPPING (…)` stops replicating tables; their destination tables stay as they
//!   are, and a publication Ferry made stops publishing them.
//! - `SET (…)` changes the options that may change while the mirror runs
//!   ([`MirrorOptions::CHANGEABLE`]).
//!
//! The mirror's new statement and its tables change in one catalog transaction, with the
//! change recorded (`mirror_changes`): a crash leaves the mirror before or after a change,
//! never half-way. The publication is changed before that transaction and the change is
//! idempotent, so a crash between the two is repaired by running the statement again. The
//! mirror's task then starts again with its new shape.

use std::collections::HashSet;
use std::sync::Arc;

use ferry_catalog::NewTable;
use ferry_core::destination::TargetName;
use ferry_core::mirror::{Mapping, MirrorChange, MirrorKind, MirrorOptions, MirrorState};
use ferry_core::peer::OptionValue;
use ferry_core::{ErrorKind, TableName};
use ferry_postgres::connect::connect;
use ferry_postgres::publication;
use tracing::{info, warn};

use crate::{not_found, peers, setup, stored_spec, Engine, FlowError};

impl Engine {
    /// Applies `ALTER MIRROR`.
    pub async fn alter_mirror(
        self: &Arc<Self>,
        name: &str,
        change: MirrorChange,
    ) -> Result<(), FlowError> {
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        if row.kind == MirrorKind::Query {
            return Err(crate::qrep::tables_only(name, "ALTER MIRROR"));
        }
        if matches!(row.state, MirrorState::SettingUp | MirrorState::Completed) {
            return Err(FlowError::invalid(
                "55000",
                format!("mirror \"{name}\" is {} and cannot be changed", row.state),
            ));
        }
        let mut spec = stored_spec(&row)?;
        let text = describe(&change);
        match change {
            MirrorChange::Set(changes) => {
                spec.options = spec.options.changed(&changes).map_err(|e| match e {
                    Ok(fixed) => FlowError::invalid(
                        "55000",
                        format!("option \"{fixed}\" cannot be changed on an existing mirror"),
                    )
                    .with_hint(format!(
                        "ALTER MIRROR … SET changes {}.",
                        MirrorOptions::CHANGEABLE.join(", ")
                    )),
                    Err(e) => FlowError::invalid(
                        match e {
                            ferry_core::peer::OptionError::WrongType { .. } => "22023",
                            _ => "42601",
                        },
                        e.to_string(),
                    ),
                })?;
                let json =
                    serde_json::to_value(&spec).map_err(|e| FlowError::internal(e.to_string()))?;
                self.catalog.change_spec(row.id, &json, &text).await?;
            }
            MirrorChange::AddTables(entries) => {
                if !matches!(spec.mapping, Mapping::Tables(_)) {
                    return Err(schema_mapping(name));
                }
                let src_cfg = peers::source_config(&self.peer_by_id(row.source_peer).await?)?;
                // The destination and the checks see the new tables' layouts too.
                if let Mapping::Tables(current) = &mut spec.mapping {
                    current.extend(entries.iter().cloned());
                }
                let dest = self.destination_of(&row, &spec).await?;
                let known = self.catalog.mirror_tables(row.id).await?;
                let mut sources: HashSet<TableName> =
                    known.iter().map(|t| t.source.clone()).collect();
                let mut targets: HashSet<TargetName> = known
                    .iter()
                    .map(|t| {
                        TargetName::new(t.destination_database.clone(), t.destination_table.clone())
                    })
                    .collect();
                let mut planned_entries = Vec::with_capacity(entries.len());
                for e in &entries {
                    let target = TargetName::new(
                        e.destination
                            .database
                            .clone()
                            .unwrap_or_else(|| dest.default_namespace().to_owned()),
                        e.destination.table.clone(),
                    );
                    if !sources.insert(e.source.clone()) {
                        return Err(FlowError::new(
                            ErrorKind::AlreadyExists,
                            "42710",
                            format!(
                                "table {} is replicated by mirror \"{name}\" already",
                                e.source
                            ),
                        ));
                    }
                    if !targets.insert(target.clone()) {
                        return Err(FlowError::new(
                            ErrorKind::AlreadyExists,
                            "42710",
                            format!("destination table {target} is the target of another table"),
                        ));
                    }
                    planned_entries.push((e.source.clone(), target, e.exclude.clone()));
                }
                let client = connect(&src_cfg, "ferry alter mirror").await?;
                let money_scale = ferry_postgres::source::money_scale(&client, &src_cfg).await?;
                let planned = setup::plan_tables(
                    &client,
                    &src_cfg,
                    dest.as_ref(),
                    planned_entries,
                    money_scale,
                    &spec.layouts(),
                )
                .await?;
                drop(client);
                let names: Vec<TableName> = planned.iter().map(|t| t.spec.source.clone()).collect();
                if let Some(p) = &row.publication_name {
                    if row.created_publication {
                        for t in &names {
                            publication::add_table(&src_cfg, p, t).await?;
                        }
                    } else {
                        setup::check_published(&src_cfg, p, &names).await?;
                    }
                }
                let mut new = Vec::with_capacity(planned.len());
                for t in &planned {
                    new.push(NewTable {
                        source: t.spec.source.clone(),
                        source_oid: t.source.oid,
                        destination_database: t.spec.target.namespace.clone(),
                        destination_table: t.spec.target.table.clone(),
                        columns: serde_json::to_value(&t.spec.columns)
                            .map_err(|e| FlowError::internal(e.to_string()))?,
                        rows_estimated: t.source.estimated_rows() as i64,
                    });
                }
                let json =
                    serde_json::to_value(&spec).map_err(|e| FlowError::internal(e.to_string()))?;
                self.catalog.add_tables(row.id, &json, &new, &text).await?;
            }
            MirrorChange::DropTables(names) => {
                let Mapping::Tables(current) = &mut spec.mapping else {
                    return Err(schema_mapping(name));
                };
                let known = self.catalog.mirror_tables(row.id).await?;
                let mut ids = Vec::with_capacity(names.len());
                for n in &names {
                    let Some(t) = known.iter().find(|t| &t.source == n) else {
                        return Err(FlowError::new(
                            ErrorKind::NotFound,
                            "42P01",
                            format!("table {n} is not replicated by mirror \"{name}\""),
                        )
                        .with_hint("SELECT * FROM mirror_tables lists the mirror's tables."));
                    };
                    ids.push(t.id);
                }
                if ids.len() == known.len() {
                    return Err(FlowError::invalid(
                        "22023",
                        format!("mirror \"{name}\" would have no tables left"),
                    )
                    .with_hint(format!("DROP MIRROR {name} stops it altogether.")));
                }
                current.retain(|e| !names.contains(&e.source));
                let json =
                    serde_json::to_value(&spec).map_err(|e| FlowError::internal(e.to_string()))?;
                self.catalog
                    .remove_tables(row.id, &json, &ids, &text)
                    .await?;
                if let (true, Some(p)) = (row.created_publication, &row.publication_name) {
                    let src_cfg = peers::source_config(&self.peer_by_id(row.source_peer).await?)?;
                    for n in &names {
                        if let Err(e) = publication::drop_table(&src_cfg, p, n).await {
                            warn!(table = %n, error = %e, "could not take the table out of the publication");
                        }
                    }
                }
            }
        }
        info!(mirror = %name, change = %text, "mirror changed");
        // The mirror's task starts again with its new shape.
        if matches!(row.state, MirrorState::Running | MirrorState::Snapshot) {
            self.stop(name).await;
            let row = self
                .catalog
                .mirror(name)
                .await?
                .ok_or_else(|| not_found(name))?;
            self.spawn(row, None).await?;
        }
        Ok(())
    }
}

fn schema_mapping(name: &str) -> FlowError {
    FlowError::new(
        ErrorKind::Unsupported,
        "0A000",
        format!(
            "mirror \"{name}\" has a schema mapping, which follows its schemas' tables by itself"
        ),
    )
}

/// The change as a person reads it, for `mirror_changes`.
fn describe(change: &MirrorChange) -> String {
    match change {
        MirrorChange::AddTables(t) => {
            let list: Vec<String> = t
                .iter()
                .map(|e| {
                    let to = match &e.destination.database {
                        Some(db) => format!("{db}.{}", e.destination.table),
                        None => e.destination.table.clone(),
                    };
                    if e.exclude.is_empty() {
                        format!("{}:{to}", e.source)
                    } else {
                        format!(
                            "{{ from: {}, to: {to}, exclude: [{}] }}",
                            e.source,
                            e.exclude.join(", ")
                        )
                    }
                })
                .collect();
            format!("ADD TABLE MAPPING ({})", list.join(", "))
        }
        MirrorChange::DropTables(t) => {
            let list: Vec<String> = t.iter().map(ToString::to_string).collect();
            format!("DROP TABLE MAPPING ({})", list.join(", "))
        }
        MirrorChange::Set(o) => {
            let list: Vec<String> = o
                .iter()
                .map(|(n, v)| format!("{n} = {}", option_text(v)))
                .collect();
            format!("SET ({})", list.join(", "))
        }
    }
}

fn option_text(v: &OptionValue) -> String {
    match v {
        OptionValue::String(s) => format!("'{}'", s.replace('\'', "''")),
        OptionValue::Number(n) => n.clone(),
        OptionValue::Bool(b) => b.to_string(),
        OptionValue::Ident(i) => i.clone(),
    }
}
