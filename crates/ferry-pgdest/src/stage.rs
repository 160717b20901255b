//! A table's changes staged in a temporary table and applied as a set.
//!
//! Each destination table has a temporary staging table on the apply connection (`ON COMMIT
//! DELETE ROWS`, so every transaction starts with it empty), with one column per carried
//! column (a domain's base type, so that the placeholders of a deletion pass the domain's
//! constraints) and Ferry's own: for a table with a key `op` (0: the key ends empty, 1: it ends
//! with this row), `keep` (the positions of the fields to take from the destination's row, as
//! they were left unchanged) and `b0…` (the key of that row); for a table without one `n` (the
//! copies to add, or to remove when negative). The net effect of the changes ([`crate::net`])
//! is written into it with one binary `COPY`, and applied by a few statements sent together:
//!
//! 1. `TRUNCATE` of the destination table, when the changes end with one;
//! 2. (with a key) the unchanged fields are filled in from the destination's rows as they are
//!    before anything else runs, under each row's base key; rows whose base row is missing
//!    keep their `keep` and are counted at the end, which fails the table;
//! 3. (with a key) the keys that end empty are deleted, then the rows that end present are
//!    upserted: `MERGE` from PostgreSQL 15, else `INSERT … ON CONFLICT (key) DO UPDATE`;
//!    deleting first keeps a key that ends present from meeting its own deletion when two
//!    keys of different bytes are equal (`1.0` and `1.00`);
//! 4. (without a key) one row for each copy to remove, matched on the row's text (every type
//!    has one, where not every type has equality), is deleted by `ctid`; then the copies to
//!    add are inserted.

use ferry_core::binary_copy::write;
use ferry_core::change::{Field, Row, TableChanges};
use ferry_core::ident::pg_ident;

use crate::net::{End, Net};
use crate::recode::{Recode, RecodeError};

/// What the staged rows of one application need done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Truncate the destination table first.
    pub truncate: bool,
    /// Keys that end without a row.
    pub gone: bool,
    /// Keys that end with a row.
    pub upserts: bool,
    /// Copies of rows (without a key) to remove.
    pub removals: bool,
    /// Copies of rows (without a key) to add.
    pub additions: bool,
}

impl Needs {
    pub(crate) fn of(net: &Net) -> Needs {
        let mut n = Needs {
            truncate: net.truncate,
            ..Needs::default()
        };
        for e in &net.ends {
            match e {
                End::Gone { .. } => n.gone = true,
                End::Upsert { .. } => n.upserts = true,
                End::Count { count, .. } if *count < 0 => n.removals = true,
                End::Count { .. } => n.additions = true,
            }
        }
        n
    }
}

/// One destination table's staging, for one set of carried columns.
#[derive(Debug)]
pub struct Stage {
    /// `pg_temp."…"`.
    pub name: String,
    /// The destination table, quoted.
    pub target: String,
    /// The carried columns' names, in the rows' order.
    pub columns: Vec<String>,
    /// Positions (in the rows) of the key's fields, in key order; empty without a key.
    pub key_slots: Vec<usize>,
    /// Per carried column, how its values are rewritten.
    pub recode: Vec<Recode>,
    /// Whether the server has `MERGE`.
    pub merge: bool,
}

/// `c<i>`: the staging column of carried column `i`.
fn c(i: usize) -> String {
    format!("c{i}")
}

impl Stage {
    fn keyed(&self) -> bool {
        !self.key_slots.is_empty()
    }

    /// `CREATE TEMP TABLE`, given each carried column's staging type (with its collation).
    pub fn create_sql(&self, types: &[String]) -> String {
        let mut cols = Vec::new();
        if self.keyed() {
            cols.push("op int2".to_owned());
            cols.push("keep int2[]".to_owned());
            for (j, &s) in self.key_slots.iter().enumerate() {
                cols.push(format!("b{j} {}", types[s]));
            }
        } else {
            cols.push("n int8".to_owned());
        }
        for (i, t) in types.iter().enumerate() {
            cols.push(format!("{} {t}", c(i)));
        }
        format!(
            "CREATE TEMP TABLE {} ({}) ON COMMIT DELETE ROWS",
            self.name,
            cols.join(", ")
        )
    }

    pub fn copy_sql(&self) -> String {
        format!("COPY {} FROM STDIN (FORMAT binary)", self.name)
    }

    /// The statements that apply what is staged, sent together; the last one counts the rows
    /// whose unchanged fields (at `keep_slots`) found no row to come from.
    pub fn apply_sql(&self, needs: Needs, keep_slots: &[usize]) -> String {
        let mut sql = Vec::new();
        if needs.truncate {
            sql.push(format!("TRUNCATE TABLE {}", self.target));
        }
        if !keep_slots.is_empty() {
            sql.push(self.resolve_sql(keep_slots));
        }
        if needs.gone {
            sql.push(self.delete_sql());
        }
        if needs.upserts {
            sql.push(if self.merge {
                self.merge_sql()
            } else {
                self.upsert_sql()
            });
        }
        if needs.removals {
            sql.push(self.remove_copies_sql());
        }
        if needs.additions {
            sql.push(self.add_copies_sql());
        }
        sql.push(if self.keyed() {
            format!("SELECT count(*) FROM {} WHERE keep IS NOT NULL", self.name)
        } else {
            "SELECT 0".to_owned()
        });
        sql.join(";\n")
    }

    /// `t.k = s.<col>` for every key column.
    fn key_match(&self, stage_col: impl Fn(usize, usize) -> String) -> String {
        self.key_slots
            .iter()
            .enumerate()
            .map(|(j, &s)| format!("t.{} = s.{}", pg_ident(&self.columns[s]), stage_col(j, s)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn resolve_sql(&self, slots: &[usize]) -> String {
        let sets: Vec<String> = slots
            .iter()
            .map(|&i| {
                format!(
                    "{ci} = CASE WHEN {i} = ANY (s.keep) THEN t.{col} ELSE s.{ci} END",
                    ci = c(i),
                    col = pg_ident(&self.columns[i])
                )
            })
            .collect();
        format!(
            "UPDATE {} AS s SET {}, keep = NULL FROM {} AS t WHERE s.keep IS NOT NULL AND {}",
            self.name,
            sets.join(", "),
            self.target,
            self.key_match(|j, _| format!("b{j}"))
        )
    }

    fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {} AS t USING {} AS s WHERE s.op = 0 AND {}",
            self.target,
            self.name,
            self.key_match(|_, s| c(s))
        )
    }

    fn non_key(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.columns.len()).filter(|i| !self.key_slots.contains(i))
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|n| pg_ident(n))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn stage_list(&self, prefix: &str) -> String {
        (0..self.columns.len())
            .map(|i| format!("{prefix}{}", c(i)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn merge_sql(&self) -> String {
        let sets: Vec<String> = self
            .non_key()
            .map(|i| format!("{} = s.{}", pg_ident(&self.columns[i]), c(i)))
            .collect();
        let matched = if sets.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", sets.join(", "))
        };
        format!(
            "MERGE INTO {} AS t USING (SELECT * FROM {} WHERE op = 1) AS s ON {} \
             WHEN MATCHED THEN {matched} \
             WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})",
            self.target,
            self.name,
            self.key_match(|_, s| c(s)),
            self.column_list(),
            self.stage_list("s.")
        )
    }

    fn upsert_sql(&self) -> String {
        let sets: Vec<String> = self
            .non_key()
            .map(|i| format!("{q} = EXCLUDED.{q}", q = pg_ident(&self.columns[i])))
            .collect();
        let keys: Vec<String> = self
            .key_slots
            .iter()
            .map(|&s| pg_ident(&self.columns[s]))
            .collect();
        let action = if sets.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", sets.join(", "))
        };
        format!(
            "INSERT INTO {} AS t ({}) SELECT {} FROM {} WHERE op = 1 ON CONFLICT ({}) {action}",
            self.target,
            self.column_list(),
            self.stage_list(""),
            self.name,
            keys.join(", ")
        )
    }

    fn remove_copies_sql(&self) -> String {
        let t_row: Vec<String> = self
            .columns
            .iter()
            .map(|n| format!("t.{}", pg_ident(n)))
            .collect();
        format!(
            "DELETE FROM {target} WHERE ctid = ANY (ARRAY(\
               SELECT x.ctid FROM (\
                 SELECT t.ctid, d.n, row_number() OVER (PARTITION BY d.r ORDER BY t.ctid) AS i \
                 FROM {target} AS t JOIN (\
                   SELECT ROW({s_row})::text AS r, -sum(s.n) AS n FROM {stage} AS s WHERE s.n < 0 GROUP BY 1\
                 ) AS d ON ROW({t_row})::text = d.r\
               ) AS x WHERE x.i <= x.n))",
            target = self.target,
            stage = self.name,
            s_row = self.stage_list("s."),
            t_row = t_row.join(", "),
        )
    }

    fn add_copies_sql(&self) -> String {
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM {} AS s CROSS JOIN LATERAL generate_series(1::int8, s.n) WHERE s.n > 0",
            self.target,
            self.column_list(),
            self.stage_list("s."),
            self.name
        )
    }

    /// The header of the staging COPY stream.
    pub fn header(out: &mut Vec<u8>) {
        write::header(out, 0, &[]);
    }

    pub fn trailer(out: &mut Vec<u8>) {
        write::trailer(out);
    }

    /// Appends one staged row for `end`. `keep` collects the positions of the fields left to
    /// take from the destination.
    pub(crate) fn encode(
        &self,
        tc: &TableChanges,
        end: &End,
        keep: &mut Vec<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), RecodeError> {
        let n = self.columns.len();
        let fields = if self.keyed() {
            2 + self.key_slots.len() + n
        } else {
            1 + n
        };
        out.extend_from_slice(&(fields as i16).to_be_bytes());
        match *end {
            End::Gone { key } => {
                int2(out, 0);
                null(out);
                for _ in &self.key_slots {
                    null(out);
                }
                let row = tc.tuple(key);
                for i in 0..n {
                    if self.key_slots.contains(&i) {
                        self.field(i, row.get(i), out)?;
                    } else {
                        null(out);
                    }
                }
            }
            End::Upsert { row, base } => {
                int2(out, 1);
                let r = tc.tuple(row);
                keep.clear();
                keep.extend((0..n).filter(|&i| r.get(i) == Field::Unchanged));
                match (keep.is_empty(), base) {
                    (false, Some(base)) => {
                        int2_array(out, keep);
                        let b: Row<'_> = tc.tuple(base);
                        for &s in &self.key_slots {
                            self.field(s, b.get(s), out)?;
                        }
                    }
                    (false, None) => {
                        return Err(RecodeError(
                            "an unchanged value without a row to take it from",
                        ))
                    }
                    (true, _) => {
                        null(out);
                        for _ in &self.key_slots {
                            null(out);
                        }
                    }
                }
                for i in 0..n {
                    self.field(i, r.get(i), out)?;
                }
            }
            End::Count { row, count } => {
                out.extend_from_slice(&8i32.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
                let r = tc.tuple(row);
                for i in 0..n {
                    self.field(i, r.get(i), out)?;
                }
            }
        }
        Ok(())
    }

    /// A carried field: its value rewritten for the destination; NULL for NULL and unchanged.
    fn field(&self, i: usize, f: Field<'_>, out: &mut Vec<u8>) -> Result<(), RecodeError> {
        match f {
            Field::Null | Field::Unchanged => null(out),
            Field::Value(raw) => {
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                self.recode[i].apply(raw, out)?;
                let len = i32::try_from(out.len() - at - 4)
                    .map_err(|_| RecodeError("value larger than 2 GiB"))?;
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        Ok(())
    }
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

fn int2(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&2i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

/// An `int2[]` field in `array_send`'s format.
fn int2_array(out: &mut Vec<u8>, values: &[usize]) {
    let len = 20 + values.len() * 6;
    out.extend_from_slice(&(len as i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // dimensions
    out.extend_from_slice(&0i32.to_be_bytes()); // no NULLs
    out.extend_from_slice(&21u32.to_be_bytes()); // int2
    out.extend_from_slice(&(values.len() as i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    for &v in values {
        out.extend_from_slice(&2i32.to_be_bytes());
        out.extend_from_slice(&(v as i16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(keyed: bool, merge: bool) -> Stage {
        Stage {
            name: "pg_temp.\"s\"".into(),
            target: "\"public\".\"t\"".into(),
            columns: vec!["id".into(), "a".into(), "big".into()],
            key_slots: if keyed { vec![0] } else { vec![] },
            recode: vec![Recode::Keep; 3],
            merge,
        }
    }

    #[test]
    fn statements_only_for_what_the_changes_need() {
        let s = stage(true, true);
        assert_eq!(
            s.apply_sql(Needs::default(), &[]),
            "SELECT count(*) FROM pg_temp.\"s\" WHERE keep IS NOT NULL"
        );
        assert!(s
            .create_sql(&["int4".into(), "text".into(), "text COLLATE \"C\"".into()])
            .starts_with("CREATE TEMP TABLE pg_temp.\"s\" (op int2, keep int2[], b0 int4, c0 int4, c1 text, c2 text COLLATE \"C\")"));
        let resolve = s.resolve_sql(&[2]);
        assert_eq!(
            resolve,
            "UPDATE pg_temp.\"s\" AS s SET c2 = CASE WHEN 2 = ANY (s.keep) THEN t.\"big\" ELSE s.c2 END, keep = NULL FROM \"public\".\"t\" AS t WHERE s.keep IS NOT NULL AND t.\"id\" = s.b0"
        );
        assert!(s
            .merge_sql()
            .contains("UPDATE SET \"a\" = s.c1, \"big\" = s.c2"));
        assert!(stage(true, false).upsert_sql().ends_with(
            "ON CONFLICT (\"id\") DO UPDATE SET \"a\" = EXCLUDED.\"a\", \"big\" = EXCLUDED.\"big\""
        ));
        assert!(stage(false, true)
            .create_sql(&vec!["int4".to_owned(); 3])
            .contains("(n int8, c0 int4"));
    }

    #[test]
    fn int2_arrays_have_array_sends_layout() {
        let mut out = Vec::new();
        int2_array(&mut out, &[2, 5]);
        let len = i32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(len, out.len() - 4);
        assert_eq!(&out[out.len() - 2..], &5i16.to_be_bytes());
    }
}
