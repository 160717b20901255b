//! Identifiers: case folding, reserved words and quoting.
//!
//! Ferry follows PostgreSQL: an unquoted identifier is folded to lower case
//! (ASCII letters only, as PostgreSQL does for UTF-8 input), a double-quoted
//! one keeps its case, and `""` inside quotes stands for one `"`. A word that
//! PostgreSQL reserves (`table`, `user`, `order`, …) cannot be used unquoted as
//! a name, so it is always printed with quotes.

use std::fmt;

/// An identifier: a peer, mirror, schema, table or column name.
///
/// Equality compares both the value and whether it was quoted, so that a
/// parse → print → parse round trip is checked exactly; compare `value` to ask
/// whether two identifiers name the same object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident {
    /// The name after case folding (unquoted) or unescaping (quoted).
    pub value: String,
    /// Whether the identifier was written in double quotes.
    pub quoted: bool,
}

impl Ident {
    /// An identifier with this exact value, marked quoted when it has to be
    /// (upper case, spaces, reserved words …), as the parser would read the
    /// identifier's canonical form: `Ident::new("orders")` is `orders`,
    /// `Ident::new("Orders")` is `"Orders"`.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        let quoted = needs_quotes(&value);
        Self { value, quoted }
    }

    /// An identifier written in double quotes; it is always printed quoted.
    pub fn quoted(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            quoted: true,
        }
    }

    /// The value as written without quotes: folded to lower case.
    pub(crate) fn from_unquoted(word: &str) -> Self {
        Self {
            value: fold_case(word),
            quoted: false,
        }
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quoted || needs_quotes(&self.value) {
            write_quoted(f, &self.value)
        } else {
            f.write_str(&self.value)
        }
    }
}

/// Folds an unquoted word the way PostgreSQL does for UTF-8: ASCII only.
pub(crate) fn fold_case(word: &str) -> String {
    word.to_ascii_lowercase()
}

/// Whether `value` reads back as itself when written without quotes, in a
/// position where any word is accepted (option names and values).
pub(crate) fn is_bare_word(value: &str) -> bool {
    let mut chars = value.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    // Non-ASCII characters are identifier characters in PostgreSQL and in
    // sqlparser's PostgreSQL dialect; upper-case ASCII would be folded.
    let start_ok = first.is_ascii_lowercase() || first == '_' || !first.is_ascii();
    start_ok
        && chars.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$' || !c.is_ascii()
        })
}

/// Whether an identifier must be quoted to read back as itself.
pub(crate) fn needs_quotes(value: &str) -> bool {
    !is_bare_word(value) || is_reserved(value)
}

/// Writes `value` in double quotes, doubling any embedded quote.
pub(crate) fn write_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    f.write_str("\"")?;
    f.write_str(&value.replace('"', "\"\""))?;
    f.write_str("\"")
}

/// Whether PostgreSQL refuses `word` (already folded) as an unquoted name:
/// its "reserved" and "reserved (can be function or type)" keywords.
pub(crate) fn is_reserved(word: &str) -> bool {
    RESERVED.binary_search(&word).is_ok()
}

/// Sorted, so that it can be binary-searched (a test checks the order).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_list_is_sorted_and_unique() {
        assert!(RESERVED.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn display_quotes_only_when_needed() {
        assert_eq!(Ident::new("orders").to_string(), "orders");
        assert_eq!(Ident::new("order").to_string(), "\"order\"");
        assert_eq!(Ident::new("Orders").to_string(), "\"Orders\"");
        assert_eq!(Ident::new("my table").to_string(), "\"my table\"");
        assert_eq!(Ident::new("a\"b").to_string(), "\"a\"\"b\"");
        assert_eq!(Ident::new("1st").to_string(), "\"1st\"");
        assert_eq!(Ident::new("").to_string(), "\"\"");
        assert_eq!(Ident::new("café_$1").to_string(), "café_$1");
        assert_eq!(Ident::quoted("orders").to_string(), "\"orders\"");
        assert!(Ident::new("Orders").quoted);
        assert!(!Ident::new("orders").quoted);
    }

    #[test]
    fn folding_is_ascii_only() {
        assert_eq!(Ident::from_unquoted("CaFÉ").value, "cafÉ");
    }
}
