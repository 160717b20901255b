//! Building batches: pgoutput's row changes turned into [`TableChanges`] in the destination's
//! wire form.
//!
//! Each change's tuples are written field by field into the table's arena: in text mode a
//! field is re-encoded into its kind's canonical binary form, in binary mode its bytes are
//! taken as they are. Columns the mirror does not copy are left out; the columns a relation
//! has now, in the table's order, are the batch's columns for that table.
//!
//! An UPDATE that leaves a TOASTed column alone does not carry its value. When an earlier
//! change of the same row is in the same chunk, the value is taken from there (the arena slot
//! is shared, nothing is copied): under the old key when the update moved the row. What is
//! left unchanged here the destination resolves (see its apply module). Rows are looked up
//! by key only in tables where such an update came: the first one in a chunk indexes the
//! table's earlier changes in the chunk, and from then on each change keeps the index up to
//! date. Other tables pay nothing for it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ferry_core::change::{ChangeKind, Field, Op, RowChange, TableChanges, TupleRef, TupleWriter};
use ferry_core::destination::TableSpec;
use ferry_core::Lsn;
use ferry_postgres::pgoutput::{TupleColumn, TupleData};
use ferry_postgres::types::text_to_canonical;

use super::relations::Relation;
use crate::FlowError;

/// Bytes of field data a chunk may hold before it is written out, whatever its row count.
pub(super) const CHUNK_BYTES: usize = 64 << 20;

/// The changes gathered since the last commit to the destination.
#[derive(Default)]
pub(super) struct Batch {
    /// The chunk not yet written: one entry per table, in order of first change.
    pub tables: Vec<TableChanges>,
    /// Target index → position in `tables`.
    index: HashMap<usize, usize>,
    /// (target, key) → the chunk's latest tuple of that row, for unchanged TOAST values.
    latest: HashMap<(usize, Vec<u8>), TupleRef>,
    /// The targets whose rows `latest` follows in this chunk.
    indexed: HashSet<usize>,
    pub chunk_rows: usize,
    chunk_bytes: usize,
    /// Rows and bytes of the transaction being received, in the chunk.
    txn_rows: usize,
    txn_bytes: usize,
    /// Rows since the last commit, written or not.
    pub rows: usize,
    pub first_lsn: Option<Lsn>,
    pub started: Option<SystemTime>,
    pub opened: Option<Instant>,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub last_commit_micros: Option<i64>,
}

impl Batch {
    /// Whether the batch is full: it closes at the next transaction boundary.
    pub fn full(&self, max_rows: usize) -> bool {
        self.rows >= max_rows || self.chunk_bytes >= CHUNK_BYTES
    }

    /// A transaction starts: the batch holds whole transactions until one alone fills it.
    pub fn begin_transaction(&mut self) {
        self.txn_rows = 0;
        self.txn_bytes = 0;
    }

    /// Whether the transaction being received is too large for a batch on its own, so that
    /// the chunk (with it) must be written before its commit, to bound memory.
    pub fn transaction_full(&self, max_rows: usize) -> bool {
        self.txn_rows >= max_rows || self.txn_bytes >= CHUNK_BYTES
    }

    pub fn chunk_has_rows_of(&self, target: usize) -> bool {
        self.index
            .get(&target)
            .is_some_and(|&i| !self.tables[i].is_empty())
    }

    /// Takes the chunk to write it; the batch's counters stay until the commit.
    pub fn take_chunk(&mut self) -> Vec<TableChanges> {
        self.index.clear();
        self.latest.clear();
        self.indexed.clear();
        self.chunk_rows = 0;
        self.chunk_bytes = 0;
        self.txn_rows = 0;
        self.txn_bytes = 0;
        std::mem::take(&mut self.tables)
    }

    fn table(&mut self, target: usize, spec: &Arc<TableSpec>, relation: &Relation) -> usize {
        if let Some(&i) = self.index.get(&target) {
            return i;
        }
        self.tables
            .push(TableChanges::new(spec.clone(), relation.columns.clone()));
        self.index.insert(target, self.tables.len() - 1);
        self.tables.len() - 1
    }

    fn opened_at(&mut self, lsn: Lsn) {
        if self.first_lsn.is_none() {
            self.first_lsn = Some(lsn);
            self.started = Some(SystemTime::now());
            self.opened = Some(Instant::now());
        }
    }

    /// Adds a `TRUNCATE` of a table in its place among the table's changes.
    pub fn push_truncate(
        &mut self,
        target: usize,
        spec: &Arc<TableSpec>,
        relation: &Relation,
        lsn: Lsn,
    ) {
        let i = self.table(target, spec, relation);
        self.tables[i].push_truncate(lsn);
        // Rows before the TRUNCATE are gone: no later change takes values from them.
        self.latest.retain(|(t, _), _| *t != target);
        self.opened_at(lsn);
    }

    /// Adds one row change.
    #[allow(clippy::too_many_arguments)]
    pub fn push_row(
        &mut self,
        target: usize,
        spec: &Arc<TableSpec>,
        relation: &Relation,
        kind: ChangeKind,
        lsn: Lsn,
        commit_lsn: Lsn,
        new: Option<&TupleData>,
        old: Option<(&TupleData, bool)>,
    ) -> Result<(), FlowError> {
        let i = self.table(target, spec, relation);
        let before = self.tables[i].data_bytes();
        let keyed = spec.has_key();
        let tc = &mut self.tables[i];
        let old_ref = match old {
            Some((tuple, _)) => Some(write_tuple(tc, spec, relation, tuple)?),
            None => None,
        };
        let new_ref = match new {
            Some(tuple) => Some(write_tuple(tc, spec, relation, tuple)?),
            None => None,
        };
        // Unchanged values from the chunk's earlier change of the row.
        let unchanged = new_ref.is_some_and(|n| tc.tuple(n).has_unchanged());
        if keyed && unchanged && !self.indexed.contains(&target) {
            index_chunk(&mut self.latest, target, tc, relation, spec);
            self.indexed.insert(target);
        }
        if keyed && self.indexed.contains(&target) {
            let old_key = old_ref.map(|t| key_of(tc, t, relation, spec));
            if let Some(new_ref) = new_ref {
                let new_key = key_of(tc, new_ref, relation, spec);
                let from_key = old_key.clone().unwrap_or_else(|| new_key.clone());
                if unchanged {
                    if let Some(&earlier) = self.latest.get(&(target, from_key)) {
                        let mut w = tc.tuple_writer_for(new_ref);
                        for s in 0..relation.columns.len() {
                            if w.get(s) == Field::Unchanged {
                                w.set_from(s, earlier, s);
                            }
                        }
                    }
                }
                if let Some(old_key) = old_key {
                    self.latest.remove(&(target, old_key));
                }
                self.latest.insert((target, new_key), new_ref);
            } else if let Some(old_key) = old_key {
                self.latest.remove(&(target, old_key));
            }
        }
        tc.push_row(RowChange {
            kind,
            lsn,
            commit_lsn,
            new: new_ref,
            old: old_ref,
            old_is_full: old.is_some_and(|(_, full)| full),
        });
        let bytes = tc.data_bytes() - before;
        self.chunk_bytes += bytes;
        self.chunk_rows += 1;
        self.txn_bytes += bytes;
        self.txn_rows += 1;
        self.rows += 1;
        match kind {
            ChangeKind::Insert => self.inserted += 1,
            ChangeKind::Update => self.updated += 1,
            ChangeKind::Delete => self.deleted += 1,
        }
        self.opened_at(lsn);
        Ok(())
    }
}

/// Writes a pgoutput tuple into the arena, in the relation's slots.
fn write_tuple(
    tc: &mut TableChanges,
    spec: &TableSpec,
    relation: &Relation,
    tuple: &TupleData,
) -> Result<TupleRef, FlowError> {
    let mut w: TupleWriter<'_> = tc.tuple_writer();
    for (i, value) in tuple.columns.iter().enumerate() {
        let Some(&Some(slot)) = relation.slots.get(i) else {
            continue;
        };
        match value {
            TupleColumn::Null => w.set_null(slot),
            TupleColumn::UnchangedToast => w.set_unchanged(slot),
            TupleColumn::Binary(b) => w.set_bytes(slot, b),
            TupleColumn::Text(text) => {
                let column = &spec.columns[relation.columns[slot]];
                w.set_with(slot, |out| text_to_canonical(&column.kind, text, out))
                    .map_err(|e| {
                        FlowError::from(e)
                            .context(format!("table {}, column \"{}\"", spec.source, column.name))
                    })?;
            }
        }
    }
    Ok(w.tuple())
}

/// Indexes the rows of the chunk's changes of one table so far: each key → its latest tuple.
fn index_chunk(
    latest: &mut HashMap<(usize, Vec<u8>), TupleRef>,
    target: usize,
    tc: &TableChanges,
    relation: &Relation,
    spec: &TableSpec,
) {
    for op in tc.ops() {
        match op {
            Op::Truncate { .. } => latest.retain(|(t, _), _| *t != target),
            Op::Row(c) => {
                if let Some(old) = c.old {
                    latest.remove(&(target, key_of(tc, old, relation, spec)));
                }
                if let Some(new) = c.new {
                    latest.insert((target, key_of(tc, new, relation, spec)), new);
                }
            }
        }
    }
}

/// A row's key as bytes (each key field's length and bytes), for finding its earlier changes.
fn key_of(tc: &TableChanges, t: TupleRef, relation: &Relation, spec: &TableSpec) -> Vec<u8> {
    let row = tc.tuple(t);
    let mut key = Vec::new();
    for (s, &c) in relation.columns.iter().enumerate() {
        if spec.columns[c].key_position.is_none() {
            continue;
        }
        match row.get(s) {
            Field::Value(b) => {
                key.extend_from_slice(&(b.len() as u32).to_le_bytes());
                key.extend_from_slice(b);
            }
            Field::Null => key.extend_from_slice(&u32::MAX.to_le_bytes()),
            Field::Unchanged => key.extend_from_slice(&(u32::MAX - 1).to_le_bytes()),
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_core::destination::TargetName;
    use ferry_core::schema::ColumnSchema;
    use ferry_core::schema::ValueKind;
    use ferry_core::TableName;

    fn spec() -> Arc<TableSpec> {
        let column = |name: &str, kind, key| ColumnSchema {
            name: name.into(),
            type_oid: 0,
            type_name: String::new(),
            kind,
            nullable: false,
            key_position: key,
            pg_type: None,
        };
        Arc::new(TableSpec {
            id: 1,
            source: TableName::new("public", "t"),
            target: TargetName::new("d", "t"),
            columns: vec![
                column("id", ValueKind::Int64, Some(1)),
                column("doc", ValueKind::Text, None),
            ],
        })
    }

    fn relation() -> Relation {
        Relation {
            target: 0,
            slots: vec![Some(0), Some(1)],
            columns: Arc::from(vec![0usize, 1]),
        }
    }

    fn tuple(id: i64, doc: Option<&str>) -> TupleData {
        TupleData {
            columns: vec![
                TupleColumn::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
                match doc {
                    Some(d) => TupleColumn::Binary(Bytes::copy_from_slice(d.as_bytes())),
                    None => TupleColumn::UnchangedToast,
                },
            ],
        }
    }

    /// The doc of each row change's new tuple, in order (`None`: still unchanged).
    fn docs(batch: &mut Batch) -> Vec<Option<String>> {
        let chunk = batch.take_chunk();
        let tc = &chunk[0];
        tc.ops()
            .iter()
            .filter_map(|op| match op {
                Op::Row(c) => c.new.map(|n| match tc.tuple(n).get(1) {
                    Field::Value(b) => Some(String::from_utf8(b.to_vec()).unwrap()),
                    _ => None,
                }),
                Op::Truncate { .. } => None,
            })
            .collect()
    }

    #[test]
    fn unchanged_values_come_from_the_chunks_earlier_change_of_the_row() {
        let (spec, relation) = (spec(), relation());
        let mut batch = Batch::default();
        let push = |b: &mut Batch, kind, new: Option<TupleData>, old: Option<TupleData>| {
            b.push_row(
                0,
                &spec,
                &relation,
                kind,
                Lsn(1),
                Lsn(1),
                new.as_ref(),
                old.as_ref().map(|o| (o, false)),
            )
            .unwrap()
        };
        // Written before any unchanged value came: indexed when the first one comes.
        push(
            &mut batch,
            ChangeKind::Insert,
            Some(tuple(1, Some("a"))),
            None,
        );
        push(
            &mut batch,
            ChangeKind::Insert,
            Some(tuple(2, Some("b"))),
            None,
        );
        push(&mut batch, ChangeKind::Update, Some(tuple(1, None)), None);
        // Followed from then on: the key moves, the value goes with it.
        push(
            &mut batch,
            ChangeKind::Update,
            Some(tuple(3, None)),
            Some(tuple(2, None)),
        );
        push(&mut batch, ChangeKind::Update, Some(tuple(3, None)), None);
        // A deleted row leaves nothing behind to take from; nor does a row before the chunk.
        push(&mut batch, ChangeKind::Delete, None, Some(tuple(1, None)));
        push(&mut batch, ChangeKind::Update, Some(tuple(1, None)), None);
        push(&mut batch, ChangeKind::Update, Some(tuple(9, None)), None);
        assert_eq!(
            docs(&mut batch),
            [
                Some("a"),
                Some("b"),
                Some("a"),
                Some("b"),
                Some("b"),
                None,
                None
            ]
            .map(|d| d.map(String::from))
        );
        // A new chunk starts without an index.
        push(&mut batch, ChangeKind::Update, Some(tuple(3, None)), None);
        assert_eq!(docs(&mut batch), [None]);
    }
}
