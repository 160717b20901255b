//! The net effect of one table's changes: what each row ends as, computed in order so that it
//! can be applied as a set.
//!
//! A table's changes arrive in source order, and one row may change many times in them (a row
//! inserted, updated twice and moved to another key in one batch; two transactions updating
//! the same rows). Applied as a set, the changes must give what applying them one by one
//! gives, so they are first reduced to their end state:
//!
//! - **A table with a key**: for every key the changes touch, whether a row is under it at the
//!   end and which. A delete, or an update that moves a row to a new key, leaves its old key
//!   empty (unless a later change fills it again); an insert or update leaves the new row
//!   under its key. An update that left a TOASTed value unchanged takes the value from the
//!   row's previous change in these changes, or from the old row when the source sent it whole
//!   (`REPLICA IDENTITY FULL`); what is still unchanged then is the value the destination's
//!   row has before these changes, under the key the row had before them (its base key, which
//!   follows the row through moves). Keys are compared by their bytes.
//! - **A table without a key** (`REPLICA IDENTITY FULL`): rows are a multiset, and identical
//!   rows cannot be told apart. Every change adds or removes one copy of a whole row (an
//!   update removes one copy of the old row and adds one of the new), and the result is, for
//!   each distinct row, how many copies to add or remove. Since every removal in a valid
//!   history finds its row, the counts do not depend on the order.
//!
//! A `TRUNCATE` empties the table: the changes before the last one do not matter, and the
//! result says to truncate first.

use std::collections::HashMap;

use ferry_core::change::{ChangeKind, Field, Op, TableChanges, TupleRef};

/// What one key (or one distinct row) ends as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Keyed: no row under the key of `key` (a tuple holding the key's fields).
    Gone { key: TupleRef },
    /// Keyed: `row` is under its key. Its fields still [`Field::Unchanged`] are those of the
    /// destination's row under the key of `base`.
    Upsert {
        row: TupleRef,
        base: Option<TupleRef>,
    },
    /// Keyless: `count` more copies of `row` (fewer when negative).
    Count { row: TupleRef, count: i64 },
}

/// The net effect of a table's changes.
#[derive(Debug, Default)]
pub(crate) struct Net {
    /// Empty the table before applying `ends`.
    pub truncate: bool,
    pub ends: Vec<End>,
}

/// Changes that cannot be reduced: the source sent something that breaks an invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetError(pub &'static str);

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Fills `new`'s unchanged fields from `from`'s (which may be unchanged themselves).
fn fill_from(tc: &mut TableChanges, new: TupleRef, from: TupleRef) {
    let n = tc.columns.len();
    let mut w = tc.tuple_writer_for(new);
    for s in 0..n {
        if w.get(s) == Field::Unchanged {
            w.set_from(s, from, s);
        }
    }
}

/// Reduces `tc` to its net effect. `key_slots` are the positions (in the rows) of the key's
/// fields, in key order; empty for a table without a key. Fills unchanged fields in `tc` where
/// an earlier change gives them.
pub(crate) fn reduce(tc: &mut TableChanges, key_slots: &[usize]) -> Result<Net, NetError> {
    let ops = tc.ops();
    let first = ops
        .iter()
        .rposition(|op| matches!(op, Op::Truncate { .. }))
        .map(|i| i + 1);
    let changes: Vec<_> = ops[first.unwrap_or(0)..]
        .iter()
        .filter_map(|op| match op {
            Op::Row(c) => Some(*c),
            Op::Truncate { .. } => None,
        })
        .collect();
    let mut net = Net {
        truncate: first.is_some(),
        ends: Vec::new(),
    };
    if key_slots.is_empty() {
        keyless(tc, &changes, &mut net)?;
    } else {
        keyed(tc, &changes, key_slots, &mut net)?;
    }
    Ok(net)
}

fn keyed(
    tc: &mut TableChanges,
    changes: &[ferry_core::change::RowChange],
    key_slots: &[usize],
    net: &mut Net,
) -> Result<(), NetError> {
    let key = |tc: &TableChanges, t: TupleRef| tc.tuple(t).fields_bytes(key_slots.iter().copied());
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    fn set(index: &mut HashMap<Vec<u8>, usize>, net: &mut Net, k: Vec<u8>, end: End) {
        match index.get(&k) {
            Some(&i) => net.ends[i] = end,
            None => {
                index.insert(k, net.ends.len());
                net.ends.push(end);
            }
        }
    }
    for c in changes {
        match c.kind {
            ChangeKind::Delete => {
                let old = c.old.ok_or(NetError("a delete without its old key"))?;
                let k = key(tc, old);
                set(&mut index, net, k, End::Gone { key: old });
            }
            ChangeKind::Insert | ChangeKind::Update => {
                let new = c
                    .new
                    .ok_or(NetError("an insert or update without its row"))?;
                let new_key = key(tc, new);
                if key_slots
                    .iter()
                    .any(|&s| tc.tuple(new).get(s) == Field::Unchanged)
                {
                    return Err(NetError("a key column is an unchanged TOAST value"));
                }
                let old_key = c.old.map(|o| key(tc, o));
                let moved = old_key.as_ref().is_some_and(|k| *k != new_key);
                let from_key = old_key.clone().unwrap_or_else(|| new_key.clone());
                let mut base = None;
                if tc.tuple(new).has_unchanged() {
                    if let (Some(old), true) = (c.old, c.old_is_full) {
                        fill_from(tc, new, old);
                    }
                    if tc.tuple(new).has_unchanged() {
                        match index.get(&from_key).map(|&i| net.ends[i]) {
                            Some(End::Upsert { row, base: b }) => {
                                fill_from(tc, new, row);
                                base = b;
                            }
                            Some(End::Gone { .. }) => {
                                return Err(NetError("an update of a row deleted before it"))
                            }
                            Some(End::Count { .. }) => return Err(NetError("mixed row kinds")),
                            None => base = Some(if moved { c.old.unwrap_or(new) } else { new }),
                        }
                        if !tc.tuple(new).has_unchanged() {
                            base = None;
                        }
                    }
                }
                if moved {
                    if let Some(old) = c.old {
                        set(&mut index, net, from_key, End::Gone { key: old });
                    }
                }
                set(&mut index, net, new_key, End::Upsert { row: new, base });
            }
        }
    }
    Ok(())
}

fn keyless(
    tc: &mut TableChanges,
    changes: &[ferry_core::change::RowChange],
    net: &mut Net,
) -> Result<(), NetError> {
    let n = tc.columns.len();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut add = |tc: &TableChanges, net: &mut Net, t: TupleRef, by: i64| {
        let k = tc.tuple(t).fields_bytes(0..n);
        match index.get(&k) {
            Some(&i) => {
                if let End::Count { count, .. } = &mut net.ends[i] {
                    *count += by;
                }
            }
            None => {
                index.insert(k, net.ends.len());
                net.ends.push(End::Count { row: t, count: by });
            }
        }
    };
    for c in changes {
        if let Some(old) = c.old {
            if c.kind == ChangeKind::Insert {
                return Err(NetError("an insert with an old row"));
            }
            if tc.tuple(old).has_unchanged() {
                return Err(NetError("an old row with an unchanged value"));
            }
            add(tc, net, old, -1);
        } else if c.kind != ChangeKind::Insert {
            return Err(NetError(
                "a change of a table without a key that does not carry its old row",
            ));
        }
        if let Some(new) = c.new {
            if let Some(old) = c.old {
                fill_from(tc, new, old);
            }
            if tc.tuple(new).has_unchanged() {
                return Err(NetError("an unchanged value without its old row"));
            }
            add(tc, net, new, 1);
        }
    }
    net.ends
        .retain(|e| !matches!(e, End::Count { count: 0, .. }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::change::{Row, RowChange};
    use ferry_core::destination::{TableSpec, TargetName};
    use ferry_core::{ColumnSchema, Lsn, TableName, ValueKind};
    use std::sync::Arc;

    /// A table (id int key, a text, big text), or without a key.
    fn changes(keyed: bool) -> TableChanges {
        let col = |name: &str, key: Option<u16>| ColumnSchema {
            name: name.into(),
            type_oid: 23,
            type_name: "integer".into(),
            kind: ValueKind::Int32,
            nullable: key.is_none(),
            key_position: key,
            pg_type: None,
        };
        let spec = Arc::new(TableSpec {
            id: 1,
            source: TableName::new("public", "t"),
            target: TargetName::new("public", "t"),
            columns: vec![
                col("id", keyed.then_some(1)),
                col("a", None),
                col("big", None),
            ],
        });
        TableChanges::new(spec, Arc::from(vec![0, 1, 2]))
    }

    #[derive(Clone, Copy)]
    enum V<'a> {
        N,
        U,
        S(&'a str),
    }

    fn tuple(tc: &mut TableChanges, fields: [V<'_>; 3]) -> TupleRef {
        let mut w = tc.tuple_writer();
        for (i, f) in fields.iter().enumerate() {
            match f {
                V::N => w.set_null(i),
                V::U => w.set_unchanged(i),
                V::S(s) => w.set_bytes(i, s.as_bytes()),
            }
        }
        w.tuple()
    }

    fn push(
        tc: &mut TableChanges,
        kind: ChangeKind,
        new: Option<[V<'_>; 3]>,
        old: Option<([V<'_>; 3], bool)>,
    ) {
        let old_full = old.map(|(_, f)| f).unwrap_or(false);
        let old = old.map(|(o, _)| tuple(tc, o));
        let new = new.map(|n| tuple(tc, n));
        let lsn = Lsn(tc.rows() as u64 + 1);
        tc.push_row(RowChange {
            kind,
            lsn,
            commit_lsn: lsn,
            new,
            old,
            old_is_full: old_full,
        });
    }

    /// The ends as text: `-k` gone, `+k:a:big<base>` upserted, `n×row` counted.
    fn show(tc: &TableChanges, net: &Net) -> Vec<String> {
        let f = |r: &Row<'_>, i: usize| match r.get(i) {
            Field::Null => "~".to_owned(),
            Field::Unchanged => "?".to_owned(),
            Field::Value(b) => String::from_utf8_lossy(b).into_owned(),
        };
        net.ends
            .iter()
            .map(|e| match *e {
                End::Gone { key } => format!("-{}", f(&tc.tuple(key), 0)),
                End::Upsert { row, base } => {
                    let r = tc.tuple(row);
                    let base = base
                        .map(|b| format!("<{}", f(&tc.tuple(b), 0)))
                        .unwrap_or_default();
                    format!("+{}:{}:{}{base}", f(&r, 0), f(&r, 1), f(&r, 2))
                }
                End::Count { row, count } => {
                    let r = tc.tuple(row);
                    format!("{count}x{}:{}:{}", f(&r, 0), f(&r, 1), f(&r, 2))
                }
            })
            .collect()
    }

    use ChangeKind::{Delete, Insert, Update};
    use V::{N, S, U};

    #[test]
    fn a_key_ends_as_its_last_change() {
        let mut tc = changes(true);
        push(&mut tc, Insert, Some([S("1"), S("a"), S("x")]), None);
        push(&mut tc, Update, Some([S("1"), S("b"), U]), None);
        push(&mut tc, Insert, Some([S("2"), S("c"), S("y")]), None);
        push(&mut tc, Delete, None, Some(([S("2"), N, N], false)));
        push(&mut tc, Update, Some([S("3"), S("d"), U]), None);
        let net = reduce(&mut tc, &[0]).unwrap();
        assert!(!net.truncate);
        // Row 1's unchanged value came from its insert; row 3's from the destination.
        assert_eq!(show(&tc, &net), ["+1:b:x", "-2", "+3:d:?<3"]);
    }

    #[test]
    fn moves_follow_the_row_and_free_the_old_key() {
        let mut tc = changes(true);
        // 1 → 5 with the big value unchanged (from the destination's row 1), then 5 → 6,
        // then a new row takes key 1; 7 and 8 swap keys through 9.
        push(
            &mut tc,
            Update,
            Some([S("5"), S("a"), U]),
            Some(([S("1"), N, N], false)),
        );
        push(
            &mut tc,
            Update,
            Some([S("6"), S("b"), U]),
            Some(([S("5"), N, N], false)),
        );
        push(&mut tc, Insert, Some([S("1"), S("new"), S("z")]), None);
        push(
            &mut tc,
            Update,
            Some([S("9"), U, U]),
            Some(([S("7"), N, N], false)),
        );
        push(
            &mut tc,
            Update,
            Some([S("7"), U, U]),
            Some(([S("8"), N, N], false)),
        );
        push(
            &mut tc,
            Update,
            Some([S("8"), U, U]),
            Some(([S("9"), N, N], false)),
        );
        let net = reduce(&mut tc, &[0]).unwrap();
        assert_eq!(
            show(&tc, &net),
            ["+1:new:z", "-5", "+6:b:?<1", "+7:?:?<8", "-9", "+8:?:?<7"]
        );
    }

    #[test]
    fn full_old_rows_and_truncate() {
        let mut tc = changes(true);
        push(&mut tc, Insert, Some([S("1"), S("a"), S("x")]), None);
        tc.push_truncate(Lsn(10));
        push(&mut tc, Insert, Some([S("2"), S("a"), S("y")]), None);
        push(
            &mut tc,
            Update,
            Some([S("2"), S("b"), U]),
            Some(([S("2"), S("a"), S("y")], true)),
        );
        push(
            &mut tc,
            Update,
            Some([S("4"), S("c"), U]),
            Some(([S("4"), S("c"), S("w")], true)),
        );
        let net = reduce(&mut tc, &[0]).unwrap();
        assert!(net.truncate);
        assert_eq!(show(&tc, &net), ["+2:b:y", "+4:c:w"]);
    }

    #[test]
    fn rows_without_a_key_are_a_multiset() {
        let mut tc = changes(false);
        let row = |a| [S("1"), S(a), N];
        push(&mut tc, Insert, Some(row("a")), None);
        push(&mut tc, Insert, Some(row("a")), None);
        push(
            &mut tc,
            Update,
            Some([S("1"), S("b"), N]),
            Some((row("a"), true)),
        );
        push(&mut tc, Delete, None, Some((row("c"), true)));
        push(&mut tc, Delete, None, Some((row("d"), true)));
        push(&mut tc, Insert, Some(row("d")), None);
        // An unchanged value in the new row is the old row's.
        push(
            &mut tc,
            Update,
            Some([S("1"), S("e"), U]),
            Some(([S("1"), S("f"), S("x")], true)),
        );
        let net = reduce(&mut tc, &[]).unwrap();
        assert_eq!(
            show(&tc, &net),
            ["1x1:a:~", "1x1:b:~", "-1x1:c:~", "-1x1:f:x", "1x1:e:x"]
        );
    }

    #[test]
    fn broken_invariants_are_errors() {
        let mut tc = changes(true);
        push(&mut tc, Delete, None, Some(([S("1"), N, N], false)));
        push(&mut tc, Update, Some([S("1"), S("a"), U]), None);
        assert!(reduce(&mut tc, &[0]).is_err());
        let mut tc = changes(true);
        push(&mut tc, Update, Some([U, S("a"), S("b")]), None);
        assert!(reduce(&mut tc, &[0]).is_err());
        let mut tc = changes(false);
        push(&mut tc, Delete, None, None);
        assert!(reduce(&mut tc, &[]).is_err());
    }
}
