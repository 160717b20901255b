//! Values a ClickHouse column cannot hold, and what Ferry does with them.
//!
//! The type mapping (README, "Type mapping") carries almost every PostgreSQL value exactly. The
//! few it cannot are:
//!
//! | value | in a column of type | [`Substitute`](UnrepresentablePolicy::Substitute) (the default) writes, when the column is not `Nullable` |
//! |---|---|---|
//! | numeric `NaN` | `Decimal(p, s)` | `0` |
//! | numeric `Infinity` / `-Infinity` | `Decimal(p, s)` | the largest / smallest `Decimal(p, s)` (`±(10^(p−s) − 10^−s)`) |
//! | a date before 1900-01-01 or after 2299-12-31, `±infinity` | `Date32` | 1900-01-01 / 2299-12-31 |
//! | a timestamp outside 1900-01-01 00:00 … 2299-12-31 23:59:59.999999, `±infinity` | `DateTime64(6)` | that range's first / last instant |
//! | an array of another number of dimensions than the column's | `Array(…)` | `[]` |
//! | an array whose lower bounds are not all 1 | `Array(…)` | the elements, from position 1 |
//!
//! Where the column is `Nullable` (a nullable scalar, a nullable array's `Variant`), the value
//! becomes NULL instead, except for the array lower bound, whose elements are always kept. An
//! array element that cannot be held becomes a NULL element (elements are always `Nullable`).
//! Every replaced value is counted per column ([`Substitutions`]), with the key of the first row
//! it happened in as an example. Under [`Fail`](UnrepresentablePolicy::Fail) such a value is
//! instead an error naming the column ([`Unrepresentable`] says what kind of value it was; the
//! value itself never appears in a message).
//!
//! The RowBinary encoder of [`Value`](ferry_core::Value)s ([`crate::rowbinary`]) and the
//! transcoder of binary COPY fields ([`crate::transcode`]) share the code that decides this
//! ([`crate::cell`]), so the load and the stream store the same value the same way.

use std::fmt;

use ferry_core::ColumnSchema;

/// What happens to a value its ClickHouse column cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UnrepresentablePolicy {
    /// Replace it (NULL, or the nearest value the column holds), count it, and go on.
    #[default]
    Substitute,
    /// Refuse it: the row, and so its table, fails with an error naming the column.
    Fail,
}

/// What kind of value a column could not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unrepresentable {
    NumericNaN,
    NumericInfinity,
    NumericNegInfinity,
    /// Before 1900-01-01, or `-infinity`.
    DateBelowRange,
    /// After 2299-12-31, or `infinity`.
    DateAboveRange,
    TimestampBelowRange,
    TimestampAboveRange,
    /// An array with another number of dimensions than the column declares.
    ArrayDims {
        expected: u8,
        got: u8,
    },
    /// An array whose lower bounds are not all 1.
    ArrayLowerBound,
}

impl fmt::Display for Unrepresentable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Unrepresentable as U;
        match self {
            U::NumericNaN | U::NumericInfinity | U::NumericNegInfinity => {
                let which = match self {
                    U::NumericNaN => "NaN",
                    U::NumericInfinity => "Infinity",
                    _ => "-Infinity",
                };
                write!(
                    f,
                    "numeric {which} cannot be stored in a ClickHouse Decimal column"
                )
            }
            U::DateBelowRange => f.write_str("a date before 1900-01-01 cannot be stored in Date32"),
            U::DateAboveRange => f.write_str("a date after 2299-12-31 cannot be stored in Date32"),
            U::TimestampBelowRange => {
                f.write_str("a timestamp before 1900-01-01 cannot be stored in DateTime64")
            }
            U::TimestampAboveRange => {
                f.write_str("a timestamp after 2299-12-31 cannot be stored in DateTime64")
            }
            U::ArrayDims { expected, got } => write!(
                f,
                "an array of {got} dimensions cannot be stored in a column of {expected}"
            ),
            U::ArrayLowerBound => f.write_str("array lower bounds other than 1 are not kept"),
        }
    }
}

/// The values replaced in one column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnSubstitutions {
    /// How many values were replaced.
    pub count: u64,
    /// Why the first one was.
    pub first: Option<Unrepresentable>,
    /// The key of the row of the first one, as `(id, name)=(42, abc)`; `None` for a table
    /// without a key (or when the key could not be rendered).
    pub example_key: Option<String>,
}

/// The values replaced in one table, per column (in the table's column order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Substitutions {
    columns: Vec<ColumnSubstitutions>,
}

impl Substitutions {
    pub fn new(columns: usize) -> Self {
        Substitutions {
            columns: vec![ColumnSubstitutions::default(); columns],
        }
    }

    /// Per column, in column order.
    pub fn columns(&self) -> &[ColumnSubstitutions] {
        &self.columns
    }

    /// Values replaced in all columns.
    pub fn total(&self) -> u64 {
        self.columns.iter().map(|c| c.count).sum()
    }

    /// Adds `other`'s counts (of the same table) to these; a column's first example stays the
    /// earliest one known.
    pub fn merge(&mut self, other: &Substitutions) {
        if self.columns.len() < other.columns.len() {
            self.columns
                .resize(other.columns.len(), ColumnSubstitutions::default());
        }
        for (mine, theirs) in self.columns.iter_mut().zip(&other.columns) {
            mine.count += theirs.count;
            if mine.first.is_none() {
                mine.first = theirs.first;
                mine.example_key.clone_from(&theirs.example_key);
            }
        }
    }

    /// Counts a replaced value; true when it is the column's first (whose key the caller then
    /// records with [`Substitutions::set_example`]).
    pub(crate) fn record(&mut self, column: usize, why: Unrepresentable) -> bool {
        let Some(c) = self.columns.get_mut(column) else {
            return false;
        };
        c.count += 1;
        if c.first.is_some() {
            return false;
        }
        c.first = Some(why);
        true
    }

    pub(crate) fn set_example(&mut self, column: usize, key: Option<String>) {
        if let Some(c) = self.columns.get_mut(column) {
            c.example_key = key;
        }
    }
}

/// The positions of a table's key columns, in key order.
pub(crate) fn key_columns(columns: &[ColumnSchema]) -> Vec<usize> {
    let mut keys: Vec<usize> = (0..columns.len())
        .filter(|&i| columns[i].key_position.is_some())
        .collect();
    keys.sort_by_key(|&i| columns[i].key_position);
    keys
}

/// `(a, b)=(1, x)` from the key columns' names and their values' text.
pub(crate) fn format_key<'a>(
    names: impl IntoIterator<Item = &'a str>,
    values: &[String],
) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let names: Vec<&str> = names.into_iter().collect();
    Some(format!("({})=({})", names.join(", "), values.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_first_examples() {
        let mut s = Substitutions::new(3);
        assert!(s.record(1, Unrepresentable::NumericNaN));
        s.set_example(1, Some("(id)=(1)".into()));
        assert!(!s.record(1, Unrepresentable::NumericInfinity));
        let mut other = Substitutions::new(3);
        assert!(other.record(2, Unrepresentable::DateAboveRange));
        other.set_example(2, Some("(id)=(9)".into()));
        assert!(other.record(1, Unrepresentable::DateBelowRange));
        s.merge(&other);
        assert_eq!(s.total(), 4);
        assert_eq!(s.columns()[1].count, 3);
        assert_eq!(s.columns()[1].first, Some(Unrepresentable::NumericNaN));
        assert_eq!(s.columns()[1].example_key.as_deref(), Some("(id)=(1)"));
        assert_eq!(s.columns()[2].example_key.as_deref(), Some("(id)=(9)"));
        assert_eq!(s.columns()[0], ColumnSubstitutions::default());
        assert!(!s.record(7, Unrepresentable::NumericNaN));
    }

    #[test]
    fn keys() {
        assert_eq!(
            format_key(["a", "b"], &["1".into(), "x".into()]).as_deref(),
            Some("(a, b)=(1, x)")
        );
        assert_eq!(format_key([], &[]), None);
    }
}
