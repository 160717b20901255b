//! Turning a mirror's peers into a source configuration and a destination: the one place
//! that names the destination crates.

use std::sync::Arc;

use ferry_catalog::StoredPeer;
use ferry_core::destination::{Destination, MirrorContext};
use ferry_core::layout::{Layouts, MetaColumns};
use ferry_core::mirror::{MirrorSpec, Unrepresentable};
use ferry_core::peer::{PeerConfig, PostgresConfig};

use crate::FlowError;

/// The source's settings, checked to be a PostgreSQL peer.
pub fn source_config(peer: &StoredPeer) -> Result<PostgresConfig, FlowError> {
    match &peer.config {
        PeerConfig::Postgres(c) => Ok(c.clone()),
        other => Err(FlowError::invalid(
            "42809",
            format!(
                "peer \"{}\" is a {} peer; a mirror's source must be a POSTGRES peer",
                peer.name,
                other.kind()
            ),
        )),
    }
}

/// The mirror a destination is built for: a destination that keeps state of its own (a
/// position, loaded ranges) keeps it per mirror. The id is the mirror's catalog id, unknown
/// while `CREATE MIRROR` checks and creates tables.
pub struct MirrorRef<'a> {
    pub name: &'a str,
    pub id: Option<i64>,
    /// Its options and its tables' layouts.
    pub spec: &'a MirrorSpec,
}

/// The destination a peer stands for, for one mirror: with its statement's table layouts.
pub fn destination(
    peer: &StoredPeer,
    mirror: &MirrorRef<'_>,
) -> Result<Arc<dyn Destination>, FlowError> {
    let options = &mirror.spec.options;
    build(
        peer,
        MirrorContext {
            mirror: mirror.name.to_owned(),
            unrepresentable: options.unrepresentable_values,
            layouts: mirror.spec.layouts(),
            meta_columns: options.meta_columns.clone(),
        },
        mirror.id,
        ferry_pgdest::PgOptions {
            initial_load: options.do_initial_copy,
            key_during_load: options.primary_key_during_load,
        },
    )
}

/// [`destination`], for a query mirror (whose options are not a [`MirrorOptions`]).
///
/// [`MirrorOptions`]: ferry_core::mirror::MirrorOptions
pub fn destination_for(
    peer: &StoredPeer,
    mirror: &str,
    id: Option<i64>,
    unrepresentable: Unrepresentable,
) -> Result<Arc<dyn Destination>, FlowError> {
    build(
        peer,
        MirrorContext {
            mirror: mirror.to_owned(),
            unrepresentable,
            layouts: Layouts::default(),
            meta_columns: MetaColumns::default(),
        },
        id,
        ferry_pgdest::PgOptions {
            initial_load: true,
            key_during_load: false,
        },
    )
}

fn build(
    peer: &StoredPeer,
    context: MirrorContext,
    id: Option<i64>,
    pg: ferry_pgdest::PgOptions,
) -> Result<Arc<dyn Destination>, FlowError> {
    match &peer.config {
        PeerConfig::Clickhouse(c) => Ok(Arc::new(ferry_clickhouse::ClickHouseDestination::new(
            c, context,
        )?)),
        PeerConfig::Postgres(c) => {
            refuse_layouts(peer, &context)?;
            Ok(Arc::new(ferry_pgdest::PgDestination::new(
                c,
                ferry_pgdest::MirrorId {
                    name: context.mirror,
                    id,
                },
                pg,
            )))
        }
    }
}

/// The table layouts and Ferry's column options are ClickHouse's: a PostgreSQL destination
/// refuses them rather than ignore them.
fn refuse_layouts(peer: &StoredPeer, context: &MirrorContext) -> Result<(), FlowError> {
    let laid_out = !context.layouts.defaults.is_default() || !context.layouts.tables.is_empty();
    if laid_out || context.meta_columns != MetaColumns::default() {
        return Err(FlowError::invalid(
            "22023",
            format!(
                "peer \"{}\" is a PostgreSQL destination, which takes no order_by, partition_by, settings, column_types, table_settings, soft_delete, soft_delete_col_name or synced_at_col_name",
                peer.name
            ),
        )
        .with_hint("These lay out ClickHouse tables; leave them out for a PostgreSQL destination."));
    }
    Ok(())
}
