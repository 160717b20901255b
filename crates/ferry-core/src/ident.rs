//! Quoting identifiers and literals: the one place user text becomes SQL.
//!
//! Ferry never splices a name or a value into a statement any other way.

/// Quotes an identifier for PostgreSQL: `"a""b"`.
pub fn pg_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes a possibly schema-qualified PostgreSQL name: `"public"."t"`.
pub fn pg_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", pg_ident(schema), pg_ident(name))
}

/// Quotes a string literal for PostgreSQL (standard_conforming_strings on): `'it''s'`.
pub fn pg_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Quotes an identifier for ClickHouse with backquotes, escaping `\` and `` ` ``.
pub fn ch_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        match c {
            '`' => out.push_str("\\`"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            _ => out.push(c),
        }
    }
    out.push('`');
    out
}

/// Quotes a `database.table` name for ClickHouse.
pub fn ch_qualified(database: &str, table: &str) -> String {
    format!("{}.{}", ch_ident(database), ch_ident(table))
}

/// Quotes a string literal for ClickHouse: `'it\'s'`.
pub fn ch_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_quoting() {
        assert_eq!(pg_ident("t"), r#""t""#);
        assert_eq!(pg_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(pg_qualified("Public", "my table"), r#""Public"."my table""#);
        assert_eq!(pg_literal("it's"), "'it''s'");
        assert_eq!(pg_literal(r"back\slash"), r"'back\slash'");
    }

    #[test]
    fn clickhouse_quoting() {
        assert_eq!(ch_ident("t"), "`t`");
        assert_eq!(ch_ident("a`b\\c"), "`a\\`b\\\\c`");
        assert_eq!(ch_qualified("db", "x y"), "`db`.`x y`");
        assert_eq!(ch_literal("it's \\ ok"), "'it\\'s \\\\ ok'");
    }
}
