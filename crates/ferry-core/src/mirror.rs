//! Mirrors: what `CREATE MIRROR` asks for, typed.

use serde::{Deserialize, Serialize};

use crate::layout::{parse_column_list, parse_settings, MetaColumns, TableLayout};
use crate::peer::{OptionError, OptionReader, OptionValue};
use crate::schema::TableName;

/// A mirror's settings from its `WITH (…)` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorOptions {
    /// Copy the existing rows before streaming.
    pub do_initial_copy: bool,
    /// Stop after the initial copy (no streaming); the slot is dropped then.
    pub initial_copy_only: bool,
    /// Rows a CTID partition should hold, roughly.
    pub rows_per_partition: u64,
    /// Partitions of one table copied at once.
    pub max_parallel_workers: u16,
    /// Tables copied at once.
    pub tables_in_parallel: u16,
    /// Publication to read; Ferry creates `ferry_<mirror>_pub` when not given.
    pub publication_name: Option<String>,
    /// Slot to create; `ferry_<mirror>_slot` when not given.
    pub slot_name: Option<String>,
    /// Longest time a batch of changes is held before it is written, in seconds.
    pub sync_interval_secs: u32,
    /// Most rows in one batch of changes.
    pub max_batch_size: u32,
    /// Warn and mark the mirror when the slot retains more WAL than this.
    pub max_slot_lag_bytes: Option<u64>,
    /// What a value the destination cannot hold does: replaced by a stand-in (and counted),
    /// or failing its table.
    #[serde(default)]
    pub unrepresentable_values: Unrepresentable,
    /// The layout of every destination table unless its mapping says otherwise (`order_by`,
    /// `partition_by`, `table_settings`).
    #[serde(default, skip_serializing_if = "TableLayout::is_default")]
    pub table_defaults: TableLayout,
    /// Ferry's own columns and what a deletion does (`soft_delete`, `soft_delete_col_name`,
    /// `synced_at_col_name`).
    #[serde(default)]
    pub meta_columns: MetaColumns,
    /// A PostgreSQL destination: create the primary key before the initial load instead of
    /// building it after (slower to load; the table has its key throughout).
    #[serde(default)]
    pub primary_key_during_load: bool,
}

/// The policy for values a destination column cannot hold (see the README's type mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrepresentable {
    /// Replaced by the documented stand-in; counted per table and column, logged once.
    #[default]
    Substitute,
    /// The value fails its table.
    Fail,
}

impl MirrorOptions {
    /// Options `ALTER MIRROR … SET` may change while the mirror runs; the others fix what the
    /// mirror is (its slot, its publication, whether it loads or streams).
    pub const CHANGEABLE: [&'static str; 7] = [
        "sync_interval",
        "max_batch_size",
        "max_slot_lag_bytes",
        "unrepresentable_values",
        "snapshot_num_rows_per_partition",
        "snapshot_max_parallel_workers",
        "snapshot_num_tables_in_parallel",
    ];

    /// The options as a `WITH (…)` list would give them.
    pub fn to_options(&self) -> Vec<(String, OptionValue)> {
        let num = |n: u64| OptionValue::Number(n.to_string());
        let mut o = vec![
            (
                "do_initial_copy".to_owned(),
                OptionValue::Bool(self.do_initial_copy),
            ),
            (
                "initial_copy_only".to_owned(),
                OptionValue::Bool(self.initial_copy_only),
            ),
            (
                "snapshot_num_rows_per_partition".to_owned(),
                num(self.rows_per_partition),
            ),
            (
                "snapshot_max_parallel_workers".to_owned(),
                num(u64::from(self.max_parallel_workers)),
            ),
            (
                "snapshot_num_tables_in_parallel".to_owned(),
                num(u64::from(self.tables_in_parallel)),
            ),
            (
                "sync_interval".to_owned(),
                num(u64::from(self.sync_interval_secs)),
            ),
            (
                "max_batch_size".to_owned(),
                num(u64::from(self.max_batch_size)),
            ),
            (
                "unrepresentable_values".to_owned(),
                OptionValue::String(
                    match self.unrepresentable_values {
                        Unrepresentable::Substitute => "substitute",
                        Unrepresentable::Fail => "fail",
                    }
                    .into(),
                ),
            ),
            (
                "primary_key_during_load".to_owned(),
                OptionValue::Bool(self.primary_key_during_load),
            ),
        ];
        if let Some(p) = &self.publication_name {
            o.push((
                "publication_name".to_owned(),
                OptionValue::String(p.clone()),
            ));
        }
        if let Some(s) = &self.slot_name {
            o.push((
                "replication_slot_name".to_owned(),
                OptionValue::String(s.clone()),
            ));
        }
        if let Some(l) = self.max_slot_lag_bytes {
            o.push(("max_slot_lag_bytes".to_owned(), num(l)));
        }
        o
    }

    /// These options with `changes` made (checked as `CREATE MIRROR` checks them). A change
    /// of an option outside [`MirrorOptions::CHANGEABLE`] is refused: `Err(Ok(name))`.
    pub fn changed(
        &self,
        changes: &[(String, OptionValue)],
    ) -> Result<MirrorOptions, Result<String, OptionError>> {
        const FIXED: [&str; 11] = [
            "do_initial_copy",
            "initial_copy_only",
            "publication_name",
            "replication_slot_name",
            "primary_key_during_load",
            "order_by",
            "partition_by",
            "table_settings",
            "soft_delete",
            "soft_delete_col_name",
            "synced_at_col_name",
        ];
        let mut merged = self.to_options();
        for (name, value) in changes {
            if FIXED.contains(&name.as_str()) {
                return Err(Ok(name.clone()));
            }
            if !Self::CHANGEABLE.contains(&name.as_str()) {
                let mut known = Self::CHANGEABLE.to_vec();
                known.sort_unstable();
                return Err(Err(OptionError::Unknown {
                    name: name.clone(),
                    context: "ALTER MIRROR … SET".into(),
                    known,
                }));
            }
            merged.retain(|(n, _)| n != name);
            merged.push((name.clone(), value.clone()));
        }
        let mut o = MirrorOptions::from_options(&merged).map_err(Err)?;
        // The tables' layout and Ferry's columns are fixed when the tables are created.
        o.table_defaults = self.table_defaults.clone();
        o.meta_columns = self.meta_columns.clone();
        Ok(o)
    }

    /// Types and checks a `CREATE MIRROR … WITH (…)` option list.
    pub fn from_options(options: &[(String, OptionValue)]) -> Result<MirrorOptions, OptionError> {
        let mut r = OptionReader::new("a mirror", options)?;
        let do_initial_copy =
            r.boolean("do_initial_copy")?
                .ok_or_else(|| OptionError::Missing {
                    name: "do_initial_copy",
                    context: "a mirror".into(),
                })?;
        let o = MirrorOptions {
            do_initial_copy,
            initial_copy_only: r.boolean("initial_copy_only")?.unwrap_or(false),
            rows_per_partition: r
                .integer("snapshot_num_rows_per_partition", 1_000, 1_000_000_000)?
                .unwrap_or(500_000) as u64,
            max_parallel_workers: r
                .integer("snapshot_max_parallel_workers", 1, 64)?
                .unwrap_or(4) as u16,
            tables_in_parallel: r
                .integer("snapshot_num_tables_in_parallel", 1, 64)?
                .unwrap_or(1) as u16,
            publication_name: r.string("publication_name")?,
            slot_name: r.string("replication_slot_name")?,
            sync_interval_secs: r.integer("sync_interval", 1, 3600)?.unwrap_or(1) as u32,
            max_batch_size: r
                .integer("max_batch_size", 1, 10_000_000)?
                .unwrap_or(100_000) as u32,
            max_slot_lag_bytes: r
                .integer("max_slot_lag_bytes", 1, i64::MAX)?
                .map(|v| v as u64),
            unrepresentable_values: match r.string("unrepresentable_values")?.as_deref() {
                None | Some("substitute") => Unrepresentable::Substitute,
                Some("fail") => Unrepresentable::Fail,
                Some(other) => {
                    return Err(OptionError::WrongType {
                        name: "unrepresentable_values".into(),
                        expected: "'substitute' or 'fail'",
                        got: format!("'{other}'"),
                    })
                }
            },
            table_defaults: TableLayout {
                order_by: r
                    .string("order_by")?
                    .map(|t| parse_column_list(&t))
                    .transpose()
                    .map_err(|e| layout_error("order_by", "a list of column names", e))?,
                partition_by: r.string("partition_by")?.filter(|s| !s.trim().is_empty()),
                settings: r
                    .string("table_settings")?
                    .map(|t| parse_settings(&t))
                    .transpose()
                    .map_err(|e| layout_error("table_settings", "a list of name = value", e))?
                    .unwrap_or_default(),
                column_types: Vec::new(),
            },
            meta_columns: MetaColumns {
                soft_delete: r.boolean("soft_delete")?.unwrap_or(false),
                is_deleted: column_name(&mut r, "soft_delete_col_name")?,
                synced_at: column_name(&mut r, "synced_at_col_name")?,
            },
            primary_key_during_load: r.boolean("primary_key_during_load")?.unwrap_or(false),
        };
        r.finish()?;
        if o.initial_copy_only && !o.do_initial_copy {
            return Err(OptionError::WrongType {
                name: "initial_copy_only".into(),
                expected: "false when do_initial_copy is false",
                got: "true".into(),
            });
        }
        Ok(o)
    }
}

fn layout_error(name: &str, expected: &'static str, e: crate::layout::LayoutError) -> OptionError {
    OptionError::WrongType {
        name: name.into(),
        expected,
        got: format!("text where {e}"),
    }
}

/// A column name option: not empty, and no longer than a PostgreSQL name.
fn column_name(
    r: &mut OptionReader<'_>,
    name: &'static str,
) -> Result<Option<String>, OptionError> {
    match r.string(name)? {
        None => Ok(None),
        Some(s) if s.is_empty() || s.len() > 63 => Err(OptionError::WrongType {
            name: name.into(),
            expected: "a column name of 1 to 63 bytes",
            got: format!("{} bytes", s.len()),
        }),
        Some(s) => Ok(Some(s)),
    }
}

/// Where a source table goes: a database (the peer's when `None`) and a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub database: Option<String>,
    pub table: String,
}

/// One `source:destination` entry of a table mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMapping {
    pub source: TableName,
    pub destination: Destination,
    /// Source columns not copied.
    pub exclude: Vec<String>,
    /// The destination table's layout, over the mirror's `table_defaults`.
    #[serde(default, skip_serializing_if = "TableLayout::is_default")]
    pub layout: TableLayout,
}

/// A change `ALTER MIRROR` makes.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorChange {
    /// Tables to replicate too.
    AddTables(Vec<TableMapping>),
    /// Source tables to stop replicating (their destination tables stay).
    DropTables(Vec<TableName>),
    /// Options to change (see [`MirrorOptions::CHANGEABLE`]).
    Set(Vec<(String, OptionValue)>),
}

/// Which tables a mirror copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mapping {
    Tables(Vec<TableMapping>),
    /// Every table of each source schema, into the database named beside it.
    Schemas(Vec<(String, String)>),
}

/// What a mirror is: stored as JSON in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorSpec {
    pub mapping: Mapping,
    pub options: MirrorOptions,
}

impl MirrorSpec {
    /// Its tables' layouts: the mirror's defaults, and each mapped table's own.
    pub fn layouts(&self) -> crate::layout::Layouts {
        let mapped = match &self.mapping {
            Mapping::Tables(t) => t.as_slice(),
            Mapping::Schemas(_) => &[],
        };
        crate::layout::Layouts::new(&self.options.table_defaults, mapped)
    }
}

/// Declares a state enum stored in the catalog as text.
macro_rules! catalog_state {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

catalog_state! {
    /// A table's state, as `mirror_tables.state` shows it.
    TableState {
        /// Not loaded yet.
        Pending = "pending",
        /// Its initial load runs.
        Copying = "copying",
        /// Loaded (or joined without a load); its changes are applied.
        Done = "done",
        /// Stopped with an error; the other tables go on.
        Failed = "failed",
        /// Being loaded again from a snapshot of its own while the other tables stream.
        Syncing = "syncing",
        /// Loaded from its own snapshot; its changes since are being applied, then it joins.
        Catchup = "catchup",
        /// Gone from the source (dropped, or renamed or moved away); its destination table stays.
        Dropped = "dropped",
    }
}

impl TableState {
    /// Whether the stream applies this table's changes.
    pub fn streams(self) -> bool {
        matches!(self, TableState::Done | TableState::Catchup)
    }
}

catalog_state! {
    /// What a mirror copies, as `mirror_status.kind` shows it.
    MirrorKind {
        /// Tables, loaded and then followed through logical replication.
        Cdc = "cdc",
        /// A query's result, run over the next range of a watermark again and again.
        Query = "query",
    }
}

catalog_state! {
    /// A CTID range's state in the initial load.
    PartitionState {
        Pending = "pending",
        Done = "done",
        Failed = "failed",
    }
}

/// A mirror's state, as `mirror_status.state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MirrorState {
    SettingUp,
    Snapshot,
    Running,
    Paused,
    Completed,
    Failed,
}

impl MirrorState {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorState::SettingUp => "setting_up",
            MirrorState::Snapshot => "snapshot",
            MirrorState::Running => "running",
            MirrorState::Paused => "paused",
            MirrorState::Completed => "completed",
            MirrorState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<MirrorState> {
        Some(match s {
            "setting_up" => MirrorState::SettingUp,
            "snapshot" => MirrorState::Snapshot,
            "running" => MirrorState::Running,
            "paused" => MirrorState::Paused,
            "completed" => MirrorState::Completed,
            "failed" => MirrorState::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for MirrorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, OptionValue)]) -> Vec<(String, OptionValue)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn do_initial_copy_is_required_and_defaults_apply() {
        let e = MirrorOptions::from_options(&[]).unwrap_err();
        assert!(
            matches!(
                e,
                OptionError::Missing {
                    name: "do_initial_copy",
                    ..
                }
            ),
            "{e}"
        );
        let o = MirrorOptions::from_options(&opts(&[("do_initial_copy", OptionValue::Bool(true))]))
            .unwrap();
        assert_eq!(
            (
                o.rows_per_partition,
                o.max_parallel_workers,
                o.sync_interval_secs
            ),
            (500_000, 4, 1)
        );
    }

    #[test]
    fn unknown_and_out_of_range_options_are_named() {
        let o = opts(&[
            ("do_initial_copy", OptionValue::Bool(true)),
            ("snapshot_workers", OptionValue::Number("2".into())),
        ]);
        let e = MirrorOptions::from_options(&o).unwrap_err();
        assert!(
            matches!(&e, OptionError::Unknown { name, .. } if name == "snapshot_workers"),
            "{e}"
        );
        let o = opts(&[
            ("do_initial_copy", OptionValue::Bool(true)),
            (
                "snapshot_max_parallel_workers",
                OptionValue::Number("0".into()),
            ),
        ]);
        assert!(MirrorOptions::from_options(&o).is_err());
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = MirrorSpec {
            mapping: Mapping::Tables(vec![TableMapping {
                source: TableName::new("public", "t"),
                destination: Destination {
                    database: None,
                    table: "t".into(),
                },
                exclude: vec!["x".into()],
                layout: TableLayout {
                    order_by: Some(vec!["a".into(), "id".into()]),
                    column_types: vec![("n".into(), "Float64".into())],
                    ..Default::default()
                },
            }]),
            options: MirrorOptions::from_options(&opts(&[(
                "do_initial_copy",
                OptionValue::Bool(true),
            )]))
            .unwrap(),
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(serde_json::from_value::<MirrorSpec>(json).unwrap(), spec);
    }
}
