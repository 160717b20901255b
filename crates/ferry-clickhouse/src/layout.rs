//! A table's layout as ClickHouse takes it: `ORDER BY`, `PARTITION BY`, `SETTINGS`, column
//! types chosen in place of the default mapping, and Ferry's own columns' names.
//!
//! The text a user gave (a partition expression, a type) is parsed here into a small grammar
//! and printed again from the parse, every identifier quoted and every string literal
//! escaped by `ferry_core::ident`: nothing a user wrote goes into DDL as it is, so no text can
//! end the clause it is in. The grammars are deliberately small:
//!
//! - an expression is numbers, strings, columns of the table, function calls `name(…)`,
//!   tuples `(…, …)`, unary minus and the operators `+ - * / %`;
//! - a type is `Name` or `Name(arg, …)`, where an argument is a type, a number, a string
//!   (optionally `= number`, for enums) or `name Type` (a named tuple element).
//!
//! What ClickHouse makes of them (an unknown function, a cast it cannot do) is asked of
//! ClickHouse itself when the mirror is checked, before anything is created
//! ([`crate::destination`]).

use ferry_core::destination::TableSpec;
use ferry_core::ident::{ch_ident, ch_literal};
use ferry_core::layout::{MetaColumns, SettingValue, TableLayout};
use ferry_core::{ColumnSchema, Error};

use crate::types::clickhouse_type;

/// Ferry's own columns of a destination table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub version: String,
    pub is_deleted: String,
    pub synced_at: String,
    /// Deleted rows stay visible under `FINAL`, flagged (`ReplacingMergeTree(version)`),
    /// rather than hidden by the engine (`ReplacingMergeTree(version, is_deleted)`).
    pub soft_delete: bool,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            version: crate::table::VERSION_COLUMN.to_owned(),
            is_deleted: crate::table::IS_DELETED_COLUMN.to_owned(),
            synced_at: crate::table::SYNCED_AT_COLUMN.to_owned(),
            soft_delete: false,
        }
    }
}

impl Meta {
    /// From a mirror's options.
    pub fn new(m: &MetaColumns) -> Meta {
        let d = Meta::default();
        Meta {
            version: d.version,
            is_deleted: m.is_deleted.clone().unwrap_or(d.is_deleted),
            synced_at: m.synced_at.clone().unwrap_or(d.synced_at),
            soft_delete: m.soft_delete,
        }
    }

    /// The three column names.
    pub fn names(&self) -> [&str; 3] {
        [&self.version, &self.is_deleted, &self.synced_at]
    }
}

/// A layout checked against its table and printed for ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// `ORDER BY` columns, quoted.
    pub order_by: Vec<String>,
    /// `PARTITION BY`'s expression, printed.
    pub partition_by: Option<String>,
    /// `SETTINGS`, printed (`name = value`).
    pub settings: Vec<(String, String)>,
    /// Per column of the table (by position): the type chosen for it.
    pub column_types: Vec<Option<ChosenType>>,
}

/// A column type chosen in place of the mapped one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenType {
    /// As the table is created with it (`Nullable` where the column is nullable).
    pub ddl: String,
    /// As written, printed: what the mapped type (without `Nullable`) must convert to.
    pub base: String,
}

impl Resolved {
    /// The type of column `i` in the table: chosen, or mapped.
    pub fn column_type(&self, i: usize, c: &ColumnSchema) -> String {
        match self.column_types.get(i).and_then(Option::as_ref) {
            Some(t) => t.ddl.clone(),
            None => clickhouse_type(&c.kind, c.nullable),
        }
    }

    /// Whether any column's type differs from the mapping (inserts then convert).
    pub fn converts(&self) -> bool {
        self.column_types.iter().any(Option::is_some)
    }
}

fn invalid(table: &TableSpec, option: &str, message: impl std::fmt::Display) -> Error {
    Error::invalid(
        "22023",
        format!("{option} of table {}: {message}", table.source),
    )
}

/// Finds a column by name: exactly, else the one that matches ignoring case.
fn find_column<'a>(names: &'a [&'a str], name: &str) -> Option<&'a str> {
    names.iter().copied().find(|n| *n == name).or_else(|| {
        let mut found = names
            .iter()
            .copied()
            .filter(|n| n.eq_ignore_ascii_case(name));
        match (found.next(), found.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    })
}

/// Checks a layout against its table and prints it; errors name the option and the table.
pub fn resolve(layout: &TableLayout, table: &TableSpec, meta: &Meta) -> Result<Resolved, Error> {
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    let keys = table.key_columns();
    let mut out = Resolved {
        column_types: vec![None; table.columns.len()],
        ..Default::default()
    };

    if keys.is_empty() && !layout.column_types.is_empty() {
        return Err(invalid(
            table,
            "column_types",
            "a table without a key keeps its mapped types: its rows are found by their values",
        ));
    }
    for (column, text) in &layout.column_types {
        let Some(i) = table.columns.iter().position(|c| &c.name == column) else {
            return Err(Error::new(
                ferry_core::ErrorKind::NotFound,
                "42703",
                format!(
                    "column_types of table {}: the table has no column \"{column}\"",
                    table.source
                ),
            ));
        };
        let c = &table.columns[i];
        if c.key_position.is_some() {
            return Err(invalid(
                table,
                "column_types",
                format!("\"{column}\" is a key column, which keeps its mapped type (rows are found by it)"),
            ));
        }
        let parsed = parse_type(text).map_err(|e| {
            invalid(
                table,
                "column_types",
                format!("the type of \"{column}\": {e}"),
            )
        })?;
        let base = parsed.print();
        out.column_types[i] = Some(ChosenType {
            ddl: if c.nullable {
                nullable(parsed)
            } else {
                base.clone()
            },
            base,
        });
    }

    if let Some(order) = &layout.order_by {
        if keys.is_empty() {
            return Err(invalid(
                table,
                "order_by",
                "a table without a key is ordered by every column, which identifies its rows",
            ));
        }
        let mut chosen: Vec<usize> = Vec::new();
        for name in order {
            let i = find_column(&names, name)
                .and_then(|n| names.iter().position(|m| *m == n))
                .ok_or_else(|| {
                    invalid(
                        table,
                        "order_by",
                        format!("the table has no column \"{name}\" (give source column names)"),
                    )
                })?;
            if chosen.contains(&i) {
                return Err(invalid(
                    table,
                    "order_by",
                    format!("\"{name}\" is given twice"),
                ));
            }
            chosen.push(i);
        }
        let missing: Vec<&str> = keys
            .iter()
            .filter(|k| !chosen.contains(k))
            .map(|&k| names[k])
            .collect();
        if !missing.is_empty() {
            return Err(invalid(
                table,
                "order_by",
                format!(
                    "it must contain every key column ({} missing): ClickHouse keeps one row per ORDER BY value, so rows with different keys would be merged into one",
                    missing.join(", ")
                ),
            )
            .with_hint("Put the key columns in ORDER BY, after columns to sort by first (order_by: [tenant_id, id])."));
        }
        out.order_by = chosen.iter().map(|&i| ch_ident(names[i])).collect();
    }

    if let Some(text) = &layout.partition_by {
        let mut allowed: Vec<&str> = names.clone();
        allowed.extend([meta.version.as_str(), meta.synced_at.as_str()]);
        let expr =
            parse_expression(text, &allowed).map_err(|e| invalid(table, "partition_by", e))?;
        out.partition_by = Some(expr);
    }

    for (name, value) in &layout.settings {
        if name.is_empty()
            || name.starts_with(|c: char| c.is_ascii_digit())
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid(
                table,
                "settings",
                format!("\"{name}\" is not a setting name"),
            ));
        }
        let printed = match value {
            SettingValue::Number(n) => {
                if !n
                    .trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.')
                    || n.trim_start_matches('-').is_empty()
                {
                    return Err(invalid(table, "settings", format!("{n} is not a number")));
                }
                n.clone()
            }
            SettingValue::String(s) => ch_literal(s),
            SettingValue::Bool(b) => u8::from(*b).to_string(),
        };
        out.settings.push((name.clone(), printed));
    }
    Ok(out)
}

/// `T` for a nullable column: `Nullable(T)`, or `LowCardinality(Nullable(T))`; a type
/// already `Nullable` stays.
fn nullable(t: TypeExpr) -> String {
    match t.name.as_str() {
        "Nullable" => t.print(),
        "LowCardinality" if t.args.len() == 1 => match &t.args[0] {
            TypeArg::Type(inner) if inner.name != "Nullable" => {
                format!("LowCardinality(Nullable({}))", inner.print())
            }
            _ => t.print(),
        },
        _ => format!("Nullable({})", t.print()),
    }
}

// ---- the grammars --------------------------------------------------------------------

/// Longest text, tokens and nesting the parsers take: enough for any real expression or type,
/// and bounded whatever is sent.
const MAX_TEXT: usize = 1000;
const MAX_TOKENS: usize = 400;
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word.
    Word(String),
    /// A quoted identifier ("x" or `x`).
    Quoted(String),
    Number(String),
    Str(String),
    Punct(char),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Word(w) | Tok::Number(w) => write!(f, "\"{w}\""),
            Tok::Quoted(w) => write!(f, "the name \"{w}\""),
            Tok::Str(s) => write!(f, "the string '{s}'"),
            Tok::Punct(c) => write!(f, "'{c}'"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    if text.len() > MAX_TEXT {
        return Err(format!("longer than {MAX_TEXT} bytes"));
    }
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if out.len() >= MAX_TOKENS {
            return Err(format!("more than {MAX_TOKENS} tokens"));
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let n: String = chars[start..i].iter().collect();
            if n.matches('.').count() > 1 || n.ends_with('.') {
                return Err(format!("\"{n}\" is not a number"));
            }
            out.push(Tok::Number(n));
        } else if c == '\'' || c == '"' || c == '`' {
            let mut s = String::new();
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err("unterminated quote".into());
                };
                i += 1;
                if d == c {
                    if chars.get(i) == Some(&c) {
                        s.push(c);
                        i += 1;
                        continue;
                    }
                    break;
                }
                s.push(d);
            }
            out.push(if c == '\'' {
                Tok::Str(s)
            } else {
                Tok::Quoted(s)
            });
        } else if "(),+-*/%=".contains(c) {
            out.push(Tok::Punct(c));
            i += 1;
        } else {
            return Err(format!("unexpected character '{c}'"));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    at: usize,
    depth: usize,
    columns: &'a [&'a str],
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn punct(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested more than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<String, String> {
        self.deeper()?;
        let mut out = self.unary()?;
        while let Some(Tok::Punct(op)) = self.peek().cloned() {
            if !"+-*/%".contains(op) {
                break;
            }
            self.at += 1;
            out = format!("{out} {op} {}", self.unary()?);
        }
        self.depth -= 1;
        Ok(out)
    }

    fn unary(&mut self) -> Result<String, String> {
        if self.punct('-') {
            return Ok(format!("-{}", self.primary()?));
        }
        self.primary()
    }

    /// `(a, b)` after the opening parenthesis.
    fn list(&mut self) -> Result<Vec<String>, String> {
        let mut items = Vec::new();
        if self.punct(')') {
            return Ok(items);
        }
        loop {
            items.push(self.expr()?);
            if self.punct(')') {
                return Ok(items);
            }
            if !self.punct(',') {
                return Err("expected , or )".into());
            }
        }
    }

    fn primary(&mut self) -> Result<String, String> {
        let tok = self
            .peek()
            .cloned()
            .ok_or_else(|| "unexpected end of the expression".to_string())?;
        self.at += 1;
        match tok {
            Tok::Number(n) => Ok(n),
            Tok::Str(s) => Ok(ch_literal(&s)),
            Tok::Punct('(') => {
                let items = self.list()?;
                match items.len() {
                    0 => Err("empty parentheses".into()),
                    1 => Ok(format!("({})", items[0])),
                    _ => Ok(format!("({})", items.join(", "))),
                }
            }
            Tok::Word(w) if self.peek() == Some(&Tok::Punct('(')) => {
                self.at += 1;
                Ok(format!("{w}({})", self.list()?.join(", ")))
            }
            Tok::Word(w) | Tok::Quoted(w) => find_column(self.columns, &w)
                .map(ch_ident)
                .ok_or_else(|| format!("\"{w}\" is not a column of the table")),
            Tok::Punct(c) => Err(format!("unexpected '{c}'")),
        }
    }
}

/// Parses a partition expression over `columns` and prints it, quoted.
pub fn parse_expression(text: &str, columns: &[&str]) -> Result<String, String> {
    let mut p = Parser {
        toks: tokenize(text)?,
        at: 0,
        depth: 0,
        columns,
    };
    if p.toks.is_empty() {
        return Err("empty".into());
    }
    let out = p.expr()?;
    match p.peek() {
        None => Ok(out),
        Some(t) => Err(format!("unexpected {t} after the expression")),
    }
}

/// A ClickHouse type, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeExpr {
    name: String,
    args: Vec<TypeArg>,
    /// Whether it was written with parentheses (`Tuple()` as opposed to `Tuple`).
    parens: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TypeArg {
    Type(TypeExpr),
    Number(String),
    /// A string, and for an enum's element its value.
    Str(String, Option<String>),
    /// A named tuple element.
    Named(String, TypeExpr),
}

impl TypeExpr {
    /// The type as ClickHouse DDL, from the parse.
    pub fn print(&self) -> String {
        if !self.parens {
            return self.name.clone();
        }
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| match a {
                TypeArg::Type(t) => t.print(),
                TypeArg::Number(n) => n.clone(),
                TypeArg::Str(s, None) => ch_literal(s),
                TypeArg::Str(s, Some(v)) => format!("{} = {v}", ch_literal(s)),
                TypeArg::Named(n, t) => format!("{} {}", ch_ident(n), t.print()),
            })
            .collect();
        format!("{}({})", self.name, args.join(", "))
    }
}

/// Parses a column type (see the module doc).
pub fn parse_type(text: &str) -> Result<TypeExpr, String> {
    let mut p = Parser {
        toks: tokenize(text)?,
        at: 0,
        depth: 0,
        columns: &[],
    };
    let t = type_expr(&mut p)?;
    match p.peek() {
        None => Ok(t),
        Some(t) => Err(format!("unexpected {t} after the type")),
    }
}

fn type_expr(p: &mut Parser<'_>) -> Result<TypeExpr, String> {
    p.deeper()?;
    let name = match p.peek().cloned() {
        Some(Tok::Word(w)) => {
            p.at += 1;
            w
        }
        Some(other) => return Err(format!("expected a type name, found {other}")),
        None => return Err("expected a type name".into()),
    };
    let mut t = TypeExpr {
        name,
        args: Vec::new(),
        parens: false,
    };
    if p.punct('(') {
        t.parens = true;
        if !p.punct(')') {
            loop {
                t.args.push(type_arg(p)?);
                if p.punct(')') {
                    break;
                }
                if !p.punct(',') {
                    return Err("expected , or ) in the type's arguments".into());
                }
            }
        }
    }
    p.depth -= 1;
    Ok(t)
}

fn signed_number(p: &mut Parser<'_>) -> Option<String> {
    let minus = p.punct('-');
    match p.peek().cloned() {
        Some(Tok::Number(n)) => {
            p.at += 1;
            Some(if minus { format!("-{n}") } else { n })
        }
        _ => None,
    }
}

fn type_arg(p: &mut Parser<'_>) -> Result<TypeArg, String> {
    match p.peek().cloned() {
        Some(Tok::Number(_)) | Some(Tok::Punct('-')) => signed_number(p)
            .map(TypeArg::Number)
            .ok_or_else(|| "expected a number".to_string()),
        Some(Tok::Str(s)) => {
            p.at += 1;
            let value = if p.punct('=') {
                Some(signed_number(p).ok_or_else(|| "expected a number after =".to_string())?)
            } else {
                None
            };
            Ok(TypeArg::Str(s, value))
        }
        Some(Tok::Word(w)) | Some(Tok::Quoted(w))
            if matches!(p.toks.get(p.at + 1), Some(Tok::Word(_))) =>
        {
            p.at += 1;
            Ok(TypeArg::Named(w, type_expr(p)?))
        }
        _ => Ok(TypeArg::Type(type_expr(p)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_printed_from_their_parse() {
        let cols = ["created_at", "id", "Region"];
        let ok = |t: &str| parse_expression(t, &cols).unwrap();
        assert_eq!(ok("toYYYYMM(created_at)"), "toYYYYMM(`created_at`)");
        assert_eq!(
            ok("(toStartOfDay(created_at), region)"),
            "(toStartOfDay(`created_at`), `Region`)"
        );
        assert_eq!(ok("intDiv(id, 1000000) % 16"), "intDiv(`id`, 1000000) % 16");
        assert_eq!(
            ok("formatDateTime(created_at, '%Y')"),
            "formatDateTime(`created_at`, '%Y')"
        );
        assert_eq!(ok("-id"), "-`id`");
        for bad in [
            "",
            "nope",
            "toYYYYMM(created_at",
            "id; DROP TABLE x",
            "id) SETTINGS x = 1 --",
            "'open",
            "1.2.3",
            "id /* c */",
            "()",
            "f(,)",
        ] {
            assert!(parse_expression(bad, &cols).is_err(), "{bad:?}");
        }
        let deep = format!("{}id{}", "f(".repeat(100), ")".repeat(100));
        assert!(parse_expression(&deep, &cols).is_err());
        assert!(parse_expression(&"a".repeat(2000), &cols).is_err());
    }

    #[test]
    fn types_are_printed_from_their_parse() {
        let p = |t: &str| parse_type(t).map(|t| t.print());
        assert_eq!(p("Float64").unwrap(), "Float64");
        assert_eq!(p("Decimal( 20 ,4 )").unwrap(), "Decimal(20, 4)");
        assert_eq!(
            p("LowCardinality(String)").unwrap(),
            "LowCardinality(String)"
        );
        assert_eq!(
            p("Enum8('a' = 1, 'it''s' = -2)").unwrap(),
            "Enum8('a' = 1, 'it\\'s' = -2)"
        );
        assert_eq!(
            p("Tuple(a Int32, b Array(String))").unwrap(),
            "Tuple(`a` Int32, `b` Array(String))"
        );
        assert_eq!(p("DateTime64(3, 'UTC')").unwrap(), "DateTime64(3, 'UTC')");
        for bad in [
            "",
            "Float64)",
            "Float64; DROP TABLE t",
            "Decimal(10, 2",
            "String DEFAULT 'x'",
            "String CODEC(ZSTD)",
            "1",
            "Array(",
        ] {
            assert!(parse_type(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            nullable(parse_type("Float64").unwrap()),
            "Nullable(Float64)"
        );
        assert_eq!(
            nullable(parse_type("LowCardinality(String)").unwrap()),
            "LowCardinality(Nullable(String))"
        );
        assert_eq!(
            nullable(parse_type("Nullable(Int8)").unwrap()),
            "Nullable(Int8)"
        );
    }
}
