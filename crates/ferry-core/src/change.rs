//! Row changes as they travel from the stream to a destination.
//!
//! The engine gathers the changes of one table into a [`TableChanges`]: the operations in
//! source order, and the fields of their rows in one byte arena, each field in the canonical
//! binary form of its column's kind (or the destination's native form; see
//! [`crate::destination::Wire`]). A row change costs a few slots and its bytes, whatever its
//! width; a destination reads rows back as [`Row`]s of borrowed [`Field`]s.
//!
//! Rows hold the fields of [`TableChanges::columns`] only: the columns of the table the
//! source's relation has now, in the table's column order.

use std::sync::Arc;

use crate::destination::TableSpec;
use crate::Lsn;

/// Where one field of a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Null,
    Unchanged,
    Bytes { start: u32, len: u32 },
}

/// One field of a row, as a destination reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    Null,
    /// A TOASTed value the change did not carry because it did not change, and that no
    /// earlier change of the same row in this [`TableChanges`] carried either: the row's
    /// value from before is the value.
    Unchanged,
    /// The value's bytes.
    Value(&'a [u8]),
}

/// What a row change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// A tuple of a [`TableChanges`]: the index of its first slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TupleRef(u32);

/// One row change.
#[derive(Debug, Clone, Copy)]
pub struct RowChange {
    pub kind: ChangeKind,
    /// The position of the change's own WAL record. It orders the changes of a row (a writer
    /// holds the row's lock until it commits) and is the same every time the WAL is decoded.
    pub lsn: Lsn,
    /// The position of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// The row after an insert or update.
    pub new: Option<TupleRef>,
    /// The row before: for a delete, and for an update that changed the key (the old key) or
    /// of a table without a key (the whole row).
    pub old: Option<TupleRef>,
    /// Whether `old` holds every column (REPLICA IDENTITY FULL), not only the key's.
    pub old_is_full: bool,
}

/// One operation on a table, in source order.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Row(RowChange),
    /// `TRUNCATE`: every row before it is gone.
    Truncate {
        lsn: Lsn,
    },
}

/// The changes of one table, in source order.
pub struct TableChanges {
    pub table: Arc<TableSpec>,
    /// The table's columns that each row carries (indices into `table.columns`, ascending).
    pub columns: Arc<[usize]>,
    ops: Vec<Op>,
    slots: Vec<Slot>,
    data: Vec<u8>,
    rows: usize,
}

impl std::fmt::Debug for TableChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableChanges")
            .field("table", &self.table.source)
            .field("ops", &self.ops.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl TableChanges {
    pub fn new(table: Arc<TableSpec>, columns: Arc<[usize]>) -> TableChanges {
        TableChanges {
            table,
            columns,
            ops: Vec::new(),
            slots: Vec::new(),
            data: Vec::new(),
            rows: 0,
        }
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Row changes held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of field data held (for bounding a batch's memory).
    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    /// The fields of a tuple.
    pub fn tuple(&self, t: TupleRef) -> Row<'_> {
        let start = t.0 as usize;
        Row {
            slots: &self.slots[start..start + self.columns.len()],
            data: &self.data,
        }
    }

    /// Starts a tuple; every field is NULL until set.
    pub fn tuple_writer(&mut self) -> TupleWriter<'_> {
        let first = self.slots.len();
        self.slots.resize(first + self.columns.len(), Slot::Null);
        TupleWriter {
            changes: self,
            first,
        }
    }

    /// Edits a tuple written earlier.
    pub fn tuple_writer_for(&mut self, t: TupleRef) -> TupleWriter<'_> {
        TupleWriter {
            first: t.0 as usize,
            changes: self,
        }
    }

    /// Adds a row change whose tuples were written with [`TableChanges::tuple_writer`].
    pub fn push_row(&mut self, change: RowChange) {
        self.ops.push(Op::Row(change));
        self.rows += 1;
    }

    pub fn push_truncate(&mut self, lsn: Lsn) {
        self.ops.push(Op::Truncate { lsn });
    }
}

/// Writes the fields of one tuple; dropping it leaves the tuple as written so far.
pub struct TupleWriter<'a> {
    changes: &'a mut TableChanges,
    first: usize,
}

impl TupleWriter<'_> {
    /// The tuple, for [`RowChange::new`] or [`RowChange::old`].
    pub fn tuple(&self) -> TupleRef {
        TupleRef(self.first as u32)
    }

    pub fn set_null(&mut self, field: usize) {
        self.changes.slots[self.first + field] = Slot::Null;
    }

    pub fn set_unchanged(&mut self, field: usize) {
        self.changes.slots[self.first + field] = Slot::Unchanged;
    }

    pub fn set_bytes(&mut self, field: usize, bytes: &[u8]) {
        let start = self.changes.data.len();
        self.changes.data.extend_from_slice(bytes);
        self.changes.slots[self.first + field] = Slot::Bytes {
            start: start as u32,
            len: bytes.len() as u32,
        };
    }

    /// Sets a field to what `write` appends to the arena.
    pub fn set_with<E>(
        &mut self,
        field: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.changes.data.len();
        if let Err(e) = write(&mut self.changes.data) {
            self.changes.data.truncate(start);
            return Err(e);
        }
        self.changes.slots[self.first + field] = Slot::Bytes {
            start: start as u32,
            len: (self.changes.data.len() - start) as u32,
        };
        Ok(())
    }

    /// Sets a field to the same value as a field of an earlier tuple (no copy).
    pub fn set_from(&mut self, field: usize, earlier: TupleRef, earlier_field: usize) {
        let slot = self.changes.slots[earlier.0 as usize + earlier_field];
        self.changes.slots[self.first + field] = slot;
    }

    /// The field as written so far.
    pub fn get(&self, field: usize) -> Field<'_> {
        resolve(self.changes.slots[self.first + field], &self.changes.data)
    }
}

fn resolve(slot: Slot, data: &[u8]) -> Field<'_> {
    match slot {
        Slot::Null => Field::Null,
        Slot::Unchanged => Field::Unchanged,
        Slot::Bytes { start, len } => {
            Field::Value(&data[start as usize..start as usize + len as usize])
        }
    }
}

/// The fields of one tuple, in [`TableChanges::columns`] order.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    slots: &'a [Slot],
    data: &'a [u8],
}

impl<'a> Row<'a> {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, i: usize) -> Field<'a> {
        resolve(self.slots[i], self.data)
    }

    pub fn iter(&self) -> impl Iterator<Item = Field<'a>> + '_ {
        self.slots.iter().map(|s| resolve(*s, self.data))
    }

    /// Whether some field is an unchanged TOAST value.
    pub fn has_unchanged(&self) -> bool {
        self.slots.contains(&Slot::Unchanged)
    }

    /// The fields at `slots` as one byte string (each value's length and bytes; markers for
    /// NULL and unchanged), equal for two rows exactly when those fields are: for finding a
    /// row's key, or a whole row, among others.
    pub fn fields_bytes(&self, slots: impl IntoIterator<Item = usize>) -> Vec<u8> {
        let mut k = Vec::new();
        for s in slots {
            match self.get(s) {
                Field::Value(b) => {
                    k.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    k.extend_from_slice(b);
                }
                Field::Null => k.extend_from_slice(&u32::MAX.to_le_bytes()),
                Field::Unchanged => k.extend_from_slice(&(u32::MAX - 1).to_le_bytes()),
            }
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::{TableSpec, TargetName};
    use crate::{ColumnSchema, TableName, ValueKind};

    fn spec() -> Arc<TableSpec> {
        let col = |name: &str, key: Option<u16>| ColumnSchema {
            name: name.into(),
            type_oid: 23,
            type_name: "integer".into(),
            kind: ValueKind::Int32,
            nullable: key.is_none(),
            key_position: key,
            pg_type: None,
        };
        Arc::new(TableSpec {
            id: 1,
            source: TableName::new("public", "t"),
            target: TargetName::new("db", "t"),
            columns: vec![col("id", Some(1)), col("a", None), col("b", None)],
        })
    }

    #[test]
    fn tuples_read_back_as_written() {
        let mut tc = TableChanges::new(spec(), Arc::from(vec![0, 2]));
        let mut w = tc.tuple_writer();
        w.set_bytes(0, &1i32.to_be_bytes());
        w.set_unchanged(1);
        let first = w.tuple();
        let mut w = tc.tuple_writer();
        w.set_from(0, first, 0);
        assert_eq!(w.get(1), Field::Null);
        w.set_with(1, |out| {
            out.extend_from_slice(b"xy");
            Ok::<_, ()>(())
        })
        .unwrap();
        assert!(w
            .set_with(1, |out| {
                out.push(0);
                Err(())
            })
            .is_err());
        let second = w.tuple();
        tc.push_row(RowChange {
            kind: ChangeKind::Insert,
            lsn: Lsn(10),
            commit_lsn: Lsn(20),
            new: Some(second),
            old: None,
            old_is_full: false,
        });
        assert_eq!(tc.rows(), 1);
        let a = tc.tuple(first);
        assert_eq!(a.get(0), Field::Value(&1i32.to_be_bytes()));
        assert!(a.has_unchanged());
        let b = tc.tuple(second);
        let fields: Vec<Field> = b.iter().collect();
        assert_eq!(
            fields,
            vec![Field::Value(&1i32.to_be_bytes()), Field::Value(b"xy")]
        );
        assert_eq!(tc.data_bytes(), 6);
    }
}
