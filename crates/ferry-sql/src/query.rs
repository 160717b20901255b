//! A query mirror's query: PeerDB's template, checked and made ready to run.
//!
//! The query is SQL for the source, as the user wrote it between `FOR $$ … $$`, with two
//! placeholders: `{{.start}}` and `{{.end}}` (spaces inside the braces allowed, as Go
//! templates allow them), the first and last watermark value of the partition being read.
//! [`parse_query`] finds them among the query's tokens — never inside a string, a comment or
//! a quoted name — and refuses what cannot work: a parameter (`$1`), braces of any other
//! kind, more than one statement. The values are never spliced in as text:
//! [`Query::render`] puts in their place SQL expressions the caller chooses (the engine reads
//! them from settings of the reading transaction, bound as typed parameters).
//!
//! What the query means is left to the source: PostgreSQL prepares it at `CREATE MIRROR` (as a
//! subquery, which admits only a `SELECT`, `VALUES` or `WITH … SELECT`, and in a read-only
//! transaction), and its errors are reported as they are.
//!
//! A query whose rows are picked by transaction id (`watermark_column = 'xmin'`) has no
//! placeholders; Ferry adds its own filter on the table's `xmin` instead
//! ([`Query::with_filter`]). That needs to know which table's rows the query returns, so such
//! a query must be of the form `SELECT … FROM table [[AS] alias] [WHERE condition]`:
//! [`Query::single_table`] recognises it from the tokens, at parenthesis depth 0.

use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use crate::ident::fold_case;
use crate::lexer::Source;

/// Why a query cannot be a query mirror's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// What is wrong, in PostgreSQL's style.
    pub message: String,
    /// What to write instead.
    pub hint: Option<String>,
}

impl QueryError {
    fn new(message: impl Into<String>, hint: Option<&str>) -> QueryError {
        QueryError {
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }
}

/// A placeholder of the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// `{{.start}}`: the partition's first watermark value.
    Start,
    /// `{{.end}}`: the partition's last watermark value.
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Bytes of the query as written.
    Text(Range<usize>),
    Placeholder(Placeholder),
}

/// Where a single-table query (see the module doc) reads its rows, and where a filter goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SingleTable {
    /// The table as written: schema (if given) and name, unquoted.
    schema: Option<String>,
    name: String,
    /// How the query's other clauses refer to the table: its alias, or its name.
    reference: String,
    /// Byte offset just past the `WHERE` keyword, if the query has one.
    after_where: Option<usize>,
}

/// A checked query template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    text: String,
    pieces: Vec<Piece>,
    /// Byte offset where the query's last token ends (trailing `;`, comments and space cut).
    end: usize,
    single: Option<SingleTable>,
    /// Every name the query mentions: unquoted ones folded to lower case, quoted ones as
    /// written.
    names: Vec<String>,
}

/// Checks a query mirror's query (see the module doc).
pub fn parse_query(text: &str) -> Result<Query, QueryError> {
    let source = Source::new(text);
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize_with_location()
        .map_err(|e| {
            QueryError::new(
                format!("the query cannot be read: {}", e.message.to_lowercase()),
                None,
            )
        })?;
    let significant: Vec<&TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    // Trailing semicolons end the statement; one before anything else starts another.
    let mut last = significant.len();
    while last > 0 && significant[last - 1].token == Token::SemiColon {
        last -= 1;
    }
    let significant = &significant[..last];
    if significant.is_empty() {
        return Err(QueryError::new(
            "the query is empty",
            Some("Write one SELECT between the dollar quotes."),
        ));
    }
    let offset = |t: &TokenWithSpan| source.byte_offset(t.span.start);
    let end = source.byte_offset(significant[last - 1].span.end);

    let mut pieces = Vec::new();
    let mut from = 0;
    let mut i = 0;
    while i < significant.len() {
        let t = significant[i];
        match &t.token {
            Token::SemiColon => {
                return Err(QueryError::new(
                    "the query holds more than one statement",
                    Some("A query mirror runs one SELECT."),
                ))
            }
            Token::Placeholder(p) if p.starts_with('$') => {
                return Err(QueryError::new(
                    format!("the query has a parameter ({p}), which nothing would give a value"),
                    Some("Use {{.start}} and {{.end}} for the partition's watermark range."),
                ))
            }
            Token::LBrace => {
                let (placeholder, taken) = placeholder_at(&significant[i..]).ok_or_else(|| {
                    QueryError::new(
                        "the query has braces that are not {{.start}} or {{.end}}",
                        Some("The placeholders are written {{.start}} and {{.end}}."),
                    )
                })?;
                pieces.push(Piece::Text(from..offset(t)));
                pieces.push(Piece::Placeholder(placeholder));
                from = source.byte_offset(significant[i + taken - 1].span.end);
                i += taken;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    pieces.push(Piece::Text(from..end));
    pieces.retain(|p| !matches!(p, Piece::Text(r) if r.is_empty()));
    let single = single_table(significant, &|t| source.byte_offset(t.span.end));
    let mut names: Vec<String> = significant
        .iter()
        .filter_map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => Some(fold_case(&w.value)),
            Token::Word(w) => Some(w.value.clone()),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    Ok(Query {
        text: text.to_owned(),
        pieces,
        end,
        single,
        names,
    })
}

/// `{ { . start|end } }` at the front of `tokens`: the placeholder and the tokens it takes.
fn placeholder_at(tokens: &[&TokenWithSpan]) -> Option<(Placeholder, usize)> {
    let t: Vec<&Token> = tokens.iter().take(6).map(|t| &t.token).collect();
    match t.as_slice() {
        [Token::LBrace, Token::LBrace, Token::Period, Token::Word(w), Token::RBrace, Token::RBrace]
            if w.quote_style.is_none() =>
        {
            match w.value.as_str() {
                "start" => Some((Placeholder::Start, 6)),
                "end" => Some((Placeholder::End, 6)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn keyword(token: &Token, kw: &str) -> bool {
    matches!(token, Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(kw))
}

/// Words after which the query is more than `SELECT … FROM table [WHERE …]`.
const OTHER_CLAUSES: &[&str] = &[
    "GROUP",
    "HAVING",
    "WINDOW",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "FETCH",
    "FOR",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "JOIN",
    "NATURAL",
    "CROSS",
    "INNER",
    "LEFT",
    "RIGHT",
    "FULL",
    "TABLESAMPLE",
];

/// Recognises `SELECT … FROM [ONLY] [schema.]table [[AS] alias] [WHERE …]` (see the module doc).
fn single_table(
    tokens: &[&TokenWithSpan],
    end_of: &dyn Fn(&TokenWithSpan) -> usize,
) -> Option<SingleTable> {
    if !keyword(&tokens.first()?.token, "SELECT") {
        return None;
    }
    // The first FROM at depth 0 that is not `IS [NOT] DISTINCT FROM`.
    let mut depth = 0i32;
    let mut from = None;
    for (i, t) in tokens.iter().enumerate().skip(1) {
        match &t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            tok if depth == 0 && keyword(tok, "FROM") => {
                if i > 0 && keyword(&tokens[i - 1].token, "DISTINCT") {
                    continue;
                }
                from = Some(i);
                break;
            }
            _ => {}
        }
    }
    let mut i = from? + 1;
    if tokens.get(i).is_some_and(|t| keyword(&t.token, "ONLY")) {
        i += 1;
    }
    let name_part = |t: Option<&&TokenWithSpan>| match t.map(|t| &t.token) {
        Some(Token::Word(w)) => Some(match w.quote_style {
            None => fold_case(&w.value),
            Some(_) => w.value.clone(),
        }),
        _ => None,
    };
    let first = name_part(tokens.get(i))?;
    i += 1;
    let (schema, name) = if tokens.get(i).is_some_and(|t| t.token == Token::Period) {
        let second = name_part(tokens.get(i + 1))?;
        i += 2;
        (Some(first), second)
    } else {
        (None, first)
    };
    let mut reference = crate::ident::Ident::quoted(name.clone()).to_string();
    if tokens.get(i).is_some_and(|t| keyword(&t.token, "AS")) {
        i += 1;
    }
    if let Some(Token::Word(w)) = tokens.get(i).map(|t| &t.token) {
        if !keyword(&tokens[i].token, "WHERE") {
            if w.quote_style.is_none() && OTHER_CLAUSES.iter().any(|k| keyword(&tokens[i].token, k))
            {
                return None;
            }
            let alias = match w.quote_style {
                None => fold_case(&w.value),
                Some(_) => w.value.clone(),
            };
            reference = crate::ident::Ident::quoted(alias).to_string();
            i += 1;
        }
    }
    let after_where = match tokens.get(i) {
        None => None,
        Some(t) if keyword(&t.token, "WHERE") => Some(end_of(t)),
        Some(_) => return None,
    };
    // Nothing at depth 0 after WHERE may start another clause.
    let mut depth = 0i32;
    for t in &tokens[i..] {
        match &t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            Token::Comma if depth == 0 => return None,
            tok if depth == 0 && OTHER_CLAUSES.iter().any(|k| keyword(tok, k)) => return None,
            _ => {}
        }
    }
    Some(SingleTable {
        schema,
        name,
        reference,
        after_where,
    })
}

impl Query {
    /// The query as the user wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the query mentions `name` (a table or column name, as PostgreSQL stores it),
    /// quoted or not.
    pub fn mentions(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    /// Whether the query has this placeholder.
    pub fn has(&self, p: Placeholder) -> bool {
        self.pieces.contains(&Piece::Placeholder(p))
    }

    /// The query with each placeholder replaced by the SQL expression given for it, without
    /// a trailing `;`. The expressions are the caller's SQL, never values.
    pub fn render(&self, start: &str, end: &str) -> String {
        let mut out = String::with_capacity(self.text.len() + 64);
        for p in &self.pieces {
            match p {
                Piece::Text(r) => out.push_str(&self.text[r.clone()]),
                Piece::Placeholder(Placeholder::Start) => out.push_str(start),
                Piece::Placeholder(Placeholder::End) => out.push_str(end),
            }
        }
        out
    }

    /// For a query of the form `SELECT … FROM table [[AS] alias] [WHERE …]`: the table, as
    /// written (schema if given, and name, unquoted).
    pub fn single_table(&self) -> Option<(Option<&str>, &str)> {
        self.single
            .as_ref()
            .map(|s| (s.schema.as_deref(), s.name.as_str()))
    }

    /// For a single-table query without placeholders: the query with the condition
    /// `filter(reference)` added to its WHERE (`reference` is how the query names the table,
    /// quoted). `None` for other queries.
    pub fn with_filter(&self, filter: impl Fn(&str) -> String) -> Option<String> {
        let single = self.single.as_ref()?;
        if self
            .pieces
            .iter()
            .any(|p| matches!(p, Piece::Placeholder(_)))
        {
            return None;
        }
        let condition = filter(&single.reference);
        // A newline ends a `--` comment the user's text may end in.
        Some(match single.after_where {
            None => format!("{}\nWHERE {condition}", &self.text[..self.end]),
            Some(w) => format!(
                "{} ({}\n) AND {condition}",
                &self.text[..w],
                &self.text[w..self.end]
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_among_tokens_only() {
        let q = parse_query(
            "SELECT * FROM t WHERE x BETWEEN {{.start}} AND {{ .end }} \
             AND note <> '{{.start}}' -- {{.end}}\n;",
        )
        .unwrap();
        assert!(q.has(Placeholder::Start) && q.has(Placeholder::End));
        assert_eq!(
            q.render("S", "E"),
            "SELECT * FROM t WHERE x BETWEEN S AND E AND note <> '{{.start}}'"
        );
        let q =
            parse_query("SELECT '{{.start}}' /* {{.end}} */ FROM \"Ev\" WHERE Upd > 1").unwrap();
        assert!(!q.has(Placeholder::Start) && !q.has(Placeholder::End));
        assert!(q.mentions("Ev") && q.mentions("upd") && !q.mentions("ev") && !q.mentions("Upd"));
    }

    #[test]
    fn what_cannot_work_is_refused() {
        for (sql, says) in [
            ("SELECT 1; SELECT 2", "more than one statement"),
            ("SELECT * FROM t WHERE id > $1", "parameter ($1)"),
            ("SELECT * FROM t WHERE id > {{.begin}}", "braces"),
            ("SELECT * FROM t WHERE id > {start}", "braces"),
            ("  ; ", "empty"),
            ("SELECT 'unterminated", "cannot be read"),
        ] {
            let e = parse_query(sql).unwrap_err();
            assert!(e.message.contains(says), "{sql}: {e}");
        }
        assert!(parse_query("SELECT 1;;").is_ok());
    }

    #[test]
    fn single_table_queries_take_a_filter() {
        let f = |r: &str| format!("{r}.xmin = 1");
        let q = parse_query("select * from public.events").unwrap();
        assert_eq!(q.single_table(), Some((Some("public"), "events")));
        assert_eq!(
            q.with_filter(f).unwrap(),
            "select * from public.events\nWHERE \"events\".xmin = 1"
        );
        let q = parse_query("SELECT a, b FROM Events AS e WHERE a = 1 OR b = 2 -- note").unwrap();
        assert_eq!(q.single_table(), Some((None, "events")));
        assert_eq!(
            q.with_filter(f).unwrap(),
            "SELECT a, b FROM Events AS e WHERE ( a = 1 OR b = 2\n) AND \"e\".xmin = 1"
        );
        let q = parse_query("SELECT a IS DISTINCT FROM b, (SELECT 1 FROM x) FROM \"T\" t").unwrap();
        assert_eq!(q.single_table(), Some((None, "T")));
        for other in [
            "SELECT * FROM a JOIN b ON true",
            "SELECT * FROM a, b",
            "SELECT * FROM a WHERE x = 1 ORDER BY x",
            "SELECT * FROM a ORDER BY x",
            "SELECT count(*) FROM a GROUP BY b",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SELECT * FROM (SELECT 1) s",
            "SELECT 1",
            "SELECT * FROM a WHERE x = 1 UNION SELECT * FROM b",
        ] {
            let q = parse_query(other).unwrap();
            assert_eq!(q.single_table(), None, "{other}");
            assert_eq!(q.with_filter(f), None, "{other}");
        }
        let q = parse_query("SELECT * FROM t WHERE x > {{.start}}").unwrap();
        assert!(q.single_table().is_some() && q.with_filter(f).is_none());
    }
}
