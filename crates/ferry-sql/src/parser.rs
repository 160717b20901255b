//! Recursive descent over the significant tokens of one Ferry statement.
//!
//! The grammar is flat (lists of names and options, nothing nested beyond one
//! level of `{…}` and `[…]`), so the parser never recurses on its input and
//! cannot be made to overflow the stack.

use sqlparser::tokenizer::{Location, Token};

use crate::ast::{
    AlterMirror, AlterMirrorAction, CreateMirror, CreatePeer, CreateQueryMirror, DropMirror,
    DropPeer, Ident, Mapping, MappingOption, MappingValue, MirrorName, OptionValue, PeerType,
    QualifiedName, Reset, ResyncMirror, SchemaMapping, SqlOption, Statement, TableMapping,
};

/// The keys of a `{ … }` table mapping entry, as errors list them.
const MAPPING_KEYS: &str = "from, to, exclude, order_by, partition_by, settings or column_types";
use crate::error::ParseError;
use crate::ident::{fold_case, is_reserved};
use crate::lexer::{Chunk, End, Source};

/// Whether a statement is one of Ferry's, judged by its first words.
pub(crate) fn is_ferry_statement(chunk: &Chunk) -> bool {
    let mut words = chunk.significant().map(|t| &t.token);
    let first = words.next();
    let second = words.next();
    if word_is(first, "PAUSE")
        || word_is(first, "RESUME")
        || word_is(first, "RESYNC")
        || word_is(first, "RESET")
    {
        return true;
    }
    // PostgreSQL's EXECUTE of a prepared statement named `mirror` is not Ferry's.
    if word_is(first, "EXECUTE") && word_is(second, "MIRROR") && words.next().is_some() {
        return true;
    }
    (word_is(first, "CREATE") || word_is(first, "DROP"))
        && (word_is(second, "PEER") || word_is(second, "MIRROR"))
        || (word_is(first, "ALTER") && word_is(second, "MIRROR"))
}

/// Parses a statement for which [`is_ferry_statement`] holds.
pub(crate) fn parse_ferry_statement(source: &Source<'_>, chunk: &Chunk) -> Result<Statement> {
    let tokens = chunk
        .significant()
        .map(|t| Tok {
            token: &t.token,
            position: source.position(t.span.start).unwrap_or(0),
            start: t.span.start,
            end: t.span.end,
        })
        .collect();
    let mut parser = FerryParser {
        source,
        tokens,
        index: 0,
        end: chunk.end,
    };
    let statement = parser.statement()?;
    parser.expect_end()?;
    Ok(statement)
}

/// Whether `token` is the unquoted word `keyword`, in any case.
fn word_is(token: Option<&Token>, keyword: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword))
}

#[derive(Clone, Copy)]
struct Tok<'a> {
    token: &'a Token,
    position: usize,
    start: Location,
    end: Location,
}

struct FerryParser<'a> {
    source: &'a Source<'a>,
    tokens: Vec<Tok<'a>>,
    index: usize,
    end: End,
}

type Result<T> = std::result::Result<T, ParseError>;

impl<'a> FerryParser<'a> {
    // ---- statements -------------------------------------------------------

    fn statement(&mut self) -> Result<Statement> {
        if self.consume_keyword("CREATE") {
            if self.consume_keyword("PEER") {
                return self.create_peer().map(Statement::CreatePeer);
            }
            self.expect_keyword("MIRROR", "expected PEER or MIRROR after CREATE")?;
            return self.create_mirror();
        }
        if self.consume_keyword("DROP") {
            if self.consume_keyword("PEER") {
                let if_exists = self.if_exists();
                let name = self.ident("peer name")?;
                return Ok(Statement::DropPeer(DropPeer { if_exists, name }));
            }
            self.expect_keyword("MIRROR", "expected PEER or MIRROR after DROP")?;
            let if_exists = self.if_exists();
            let name = self.ident("mirror name")?;
            return Ok(Statement::DropMirror(DropMirror { if_exists, name }));
        }
        if self.consume_keyword("RESET") {
            return self.reset().map(Statement::Reset);
        }
        if self.consume_keyword("ALTER") {
            self.expect_keyword("MIRROR", "expected MIRROR after ALTER")?;
            return self.alter_mirror().map(Statement::AlterMirror);
        }
        let make: fn(MirrorName) -> Statement = if self.consume_keyword("PAUSE") {
            Statement::PauseMirror
        } else if self.consume_keyword("RESUME") {
            Statement::ResumeMirror
        } else if self.consume_keyword("EXECUTE") {
            Statement::ExecuteMirror
        } else {
            self.expect_keyword("RESYNC", "expected a Ferry statement")?;
            self.expect_keyword("MIRROR", "expected MIRROR")?;
            let name = self.ident("mirror name")?;
            let mut tables = Vec::new();
            if self.consume_keyword("TABLE") {
                loop {
                    tables.push(self.qualified_name("table name")?);
                    if !self.consume_token(&Token::Comma) {
                        break;
                    }
                }
            }
            return Ok(Statement::ResyncMirror(ResyncMirror { name, tables }));
        };
        self.expect_keyword("MIRROR", "expected MIRROR")?;
        let name = self.ident("mirror name")?;
        Ok(make(MirrorName { name }))
    }

    /// After `RESET`: words, possibly joined by `.`, to the end of the statement.
    fn reset(&mut self) -> Result<Reset> {
        let mut target = String::new();
        let mut after_period = true;
        while let Some(tok) = self.peek() {
            match tok.token {
                Token::Word(w) => {
                    if !after_period {
                        target.push(' ');
                    }
                    match w.quote_style {
                        None => target.push_str(&fold_case(&w.value)),
                        Some(_) => target.push_str(&Ident::quoted(w.value.clone()).to_string()),
                    }
                    after_period = false;
                }
                Token::Period if !after_period => {
                    target.push('.');
                    after_period = true;
                }
                _ => return Err(self.error_at(tok, Some("expected a setting name or ALL"))),
            }
            self.index += 1;
        }
        if target.is_empty() || after_period {
            return Err(self.error_here(Some("expected a setting name or ALL")));
        }
        Ok(Reset { target })
    }

    /// After `ALTER MIRROR`.
    fn alter_mirror(&mut self) -> Result<AlterMirror> {
        let name = self.ident("mirror name")?;
        let action = if self.consume_keyword("ADD") {
            self.expect_keyword("TABLE", "expected TABLE MAPPING after ADD")?;
            self.expect_keyword("MAPPING", "expected MAPPING after ADD TABLE")?;
            self.expect_token(&Token::LParen, "expected ( after TABLE MAPPING")?;
            AlterMirrorAction::AddTables(self.list(&Token::RParen, ")", Self::table_mapping)?)
        } else if self.consume_keyword("DROP") {
            self.expect_keyword("TABLE", "expected TABLE MAPPING after DROP")?;
            self.expect_keyword("MAPPING", "expected MAPPING after DROP TABLE")?;
            self.expect_token(&Token::LParen, "expected ( after TABLE MAPPING")?;
            AlterMirrorAction::DropTables(
                self.list(&Token::RParen, ")", |p| p.qualified_name("table name"))?,
            )
        } else if self.consume_keyword("SET") {
            self.expect_token(&Token::LParen, "expected ( after SET")?;
            let mut options: Vec<SqlOption> = Vec::new();
            self.list(&Token::RParen, ")", |p| {
                let option = p.option()?;
                if options.iter().any(|o| o.name == option.name) {
                    return Err(ParseError::new(
                        format!("duplicate option \"{}\"", option.name),
                        option.position,
                    ));
                }
                options.push(option);
                Ok(())
            })?;
            AlterMirrorAction::Set(options)
        } else {
            return Err(self.error_here(Some(
                "expected ADD TABLE MAPPING, DROP TABLE MAPPING or SET after the mirror name",
            )));
        };
        Ok(AlterMirror { name, action })
    }

    /// After `CREATE PEER`.
    fn create_peer(&mut self) -> Result<CreatePeer> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.ident("peer name")?;
        self.expect_keyword("FROM", "expected FROM after peer name")?;
        let peer_type = self.peer_type()?;
        let options = self.opt_with_options()?;
        Ok(CreatePeer {
            if_not_exists,
            name,
            peer_type,
            options,
        })
    }

    fn peer_type(&mut self) -> Result<PeerType> {
        let expected = "expected peer type POSTGRES or CLICKHOUSE";
        let tok = self.peek().ok_or_else(|| self.error_here(Some(expected)))?;
        let Token::Word(word) = tok.token else {
            return Err(self.error_at(tok, Some(expected)));
        };
        let peer_type = PeerType::from_keyword(&word.value).ok_or_else(|| {
            let supported: Vec<_> = PeerType::ALL.iter().map(|t| t.as_str()).collect();
            ParseError::new(
                format!(
                    "unknown peer type \"{}\"; supported: {}",
                    word.value,
                    supported.join(", ")
                ),
                tok.position,
            )
        })?;
        self.index += 1;
        Ok(peer_type)
    }

    /// After `CREATE MIRROR`: a mirror of tables, or of a query (`FOR $$…$$`).
    fn create_mirror(&mut self) -> Result<Statement> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.ident("mirror name")?;
        self.expect_keyword("FROM", "expected FROM after mirror name")?;
        let source = self.ident("source peer name")?;
        self.expect_keyword("TO", "expected TO after source peer name")?;
        let destination = self.ident("destination peer name")?;
        if self.consume_keyword("FOR") {
            let query = self.query_string()?;
            let options = self.opt_with_options()?;
            return Ok(Statement::CreateQueryMirror(CreateQueryMirror {
                if_not_exists,
                name,
                source,
                destination,
                query,
                options,
            }));
        }
        let mapping = self.mapping()?;
        let options = self.opt_with_options()?;
        Ok(Statement::CreateMirror(CreateMirror {
            if_not_exists,
            name,
            source,
            destination,
            mapping,
            options,
        }))
    }

    /// The query of `FOR`: a string, dollar-quoted as PeerDB writes it (`$$SELECT …$$`), or
    /// single-quoted.
    fn query_string(&mut self) -> Result<String> {
        let expected = "expected the query as a dollar-quoted string after FOR ($$SELECT …$$)";
        let tok = self.peek().ok_or_else(|| self.error_here(Some(expected)))?;
        let query = match tok.token {
            Token::DollarQuotedString(s) => s.value.clone(),
            Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => s.clone(),
            _ => return Err(self.error_at(tok, Some(expected))),
        };
        self.index += 1;
        Ok(query)
    }

    // ---- mappings ---------------------------------------------------------

    fn mapping(&mut self) -> Result<Mapping> {
        self.expect_keyword(
            "WITH",
            "expected WITH TABLE MAPPING or WITH SCHEMA MAPPING after destination peer name",
        )?;
        if self.consume_keyword("TABLE") {
            self.expect_keyword("MAPPING", "expected MAPPING after WITH TABLE")?;
            self.expect_token(&Token::LParen, "expected ( after TABLE MAPPING")?;
            let tables = self.list(&Token::RParen, ")", Self::table_mapping)?;
            return Ok(Mapping::Tables(tables));
        }
        if self.consume_keyword("SCHEMA") {
            self.expect_keyword("MAPPING", "expected MAPPING after WITH SCHEMA")?;
            self.expect_token(&Token::LParen, "expected ( after SCHEMA MAPPING")?;
            let schemas = self.list(&Token::RParen, ")", Self::schema_mapping)?;
            return Ok(Mapping::Schemas(schemas));
        }
        Err(self.error_here(Some("expected TABLE MAPPING or SCHEMA MAPPING after WITH")))
    }

    /// `source:destination` or `{ from: …, to: …, exclude: […] }`.
    fn table_mapping(&mut self) -> Result<TableMapping> {
        let position = self.here();
        if !self.consume_token(&Token::LBrace) {
            let source = self.qualified_name("source table name")?;
            self.expect_token(&Token::Colon, "expected : after source table name")?;
            let destination = self.qualified_name("destination table name")?;
            return Ok(TableMapping {
                source,
                destination,
                exclude: Vec::new(),
                options: Vec::new(),
                position,
            });
        }

        let mut from = None;
        let mut to = None;
        let mut exclude = None;
        let mut options: Vec<MappingOption> = Vec::new();
        let expected = format!("expected {MAPPING_KEYS}");
        self.list(&Token::RBrace, "}", |p| {
            let tok = p.peek().ok_or_else(|| p.error_here(Some(&expected)))?;
            let Token::Word(word) = tok.token else {
                return Err(p.error_at(tok, Some(&expected)));
            };
            let key = fold_case(&word.value);
            let duplicate = match key.as_str() {
                "from" => from.is_some(),
                "to" => to.is_some(),
                "exclude" => exclude.is_some(),
                "order_by" | "partition_by" | "settings" | "column_types" => {
                    options.iter().any(|o| o.key == key)
                }
                _ => {
                    return Err(ParseError::new(
                        format!(
                            "unknown key \"{}\" in table mapping; expected {MAPPING_KEYS}",
                            word.value
                        ),
                        tok.position,
                    ))
                }
            };
            if duplicate {
                return Err(ParseError::new(
                    format!("duplicate key \"{key}\" in table mapping"),
                    tok.position,
                ));
            }
            p.index += 1;
            p.expect_token(&Token::Colon, &format!("expected : after {key}"))?;
            let value = match key.as_str() {
                "from" => {
                    from = Some(p.qualified_name("source table name")?);
                    None
                }
                "to" => {
                    to = Some(p.qualified_name("destination table name")?);
                    None
                }
                "exclude" => {
                    exclude = Some(p.column_list("excluded columns")?);
                    None
                }
                "order_by" => Some(MappingValue::Columns(p.column_list("ORDER BY columns")?)),
                "column_types" => Some(MappingValue::Types(p.column_types()?)),
                _ => Some(MappingValue::Text(p.text(&key)?)),
            };
            if let Some(value) = value {
                options.push(MappingOption {
                    key,
                    value,
                    position: tok.position,
                });
            }
            Ok(())
        })?;

        let missing =
            |key: &str| ParseError::new(format!("table mapping is missing \"{key}\""), position);
        Ok(TableMapping {
            source: from.ok_or_else(|| missing("from"))?,
            destination: to.ok_or_else(|| missing("to"))?,
            exclude: exclude.unwrap_or_default(),
            options,
            position,
        })
    }

    /// A string literal, the value of `key`.
    fn text(&mut self, key: &str) -> Result<String> {
        let expected = format!("expected a string after {key}:");
        let tok = self
            .peek()
            .ok_or_else(|| self.error_here(Some(&expected)))?;
        let text = match tok.token {
            Token::SingleQuotedString(s)
            | Token::EscapedStringLiteral(s)
            | Token::UnicodeStringLiteral(s)
            | Token::NationalStringLiteral(s) => s.clone(),
            Token::DollarQuotedString(s) => s.value.clone(),
            _ => return Err(self.error_at(tok, Some(&expected))),
        };
        self.index += 1;
        Ok(text)
    }

    /// `{column: 'Type', …}`.
    fn column_types(&mut self) -> Result<Vec<(Ident, String)>> {
        self.expect_token(&Token::LBrace, "expected { before the column types")?;
        let mut types: Vec<(Ident, String)> = Vec::new();
        self.list(&Token::RBrace, "}", |p| {
            let at = p.here();
            let column = p.ident("column name")?;
            if types.iter().any(|(c, _)| *c == column) {
                return Err(ParseError::new(
                    format!("column \"{}\" is given twice in column_types", column.value),
                    at,
                ));
            }
            p.expect_token(&Token::Colon, "expected : after the column name")?;
            types.push((column, p.text("the column name")?));
            Ok(())
        })?;
        Ok(types)
    }

    /// `[column, …]`, possibly empty.
    fn column_list(&mut self, what: &str) -> Result<Vec<Ident>> {
        self.expect_token(&Token::LBracket, &format!("expected [ before the {what}"))?;
        if self.consume_token(&Token::RBracket) {
            return Ok(Vec::new());
        }
        self.list(&Token::RBracket, "]", |p| p.ident("column name"))
    }

    fn schema_mapping(&mut self) -> Result<SchemaMapping> {
        let position = self.here();
        let source = self.ident("source schema name")?;
        self.expect_token(&Token::Colon, "expected : after source schema name")?;
        let destination = self.ident("destination schema name")?;
        Ok(SchemaMapping {
            source,
            destination,
            position,
        })
    }

    // ---- options ----------------------------------------------------------

    /// `[WITH (name = value, …)]`
    fn opt_with_options(&mut self) -> Result<Vec<SqlOption>> {
        if !self.consume_keyword("WITH") {
            return Ok(Vec::new());
        }
        self.expect_token(&Token::LParen, "expected ( after WITH")?;
        let mut options: Vec<SqlOption> = Vec::new();
        self.list(&Token::RParen, ")", |p| {
            let option = p.option()?;
            if options.iter().any(|o| o.name == option.name) {
                return Err(ParseError::new(
                    format!("duplicate option \"{}\"", option.name),
                    option.position,
                ));
            }
            options.push(option);
            Ok(())
        })?;
        Ok(options)
    }

    fn option(&mut self) -> Result<SqlOption> {
        let tok = self
            .peek()
            .ok_or_else(|| self.error_here(Some("expected option name")))?;
        let Token::Word(word) = tok.token else {
            return Err(self.error_at(tok, Some("expected option name")));
        };
        if word.value.is_empty() {
            return Err(zero_length(tok.position));
        }
        self.index += 1;
        let name = fold_case(&word.value);
        self.expect_token(&Token::Eq, &format!("expected = after option name {name}"))?;
        let value = self.option_value()?;
        Ok(SqlOption {
            name,
            value,
            position: tok.position,
        })
    }

    fn option_value(&mut self) -> Result<OptionValue> {
        let expected = "expected a string, number, boolean or name as option value";
        let tok = self.peek().ok_or_else(|| self.error_here(Some(expected)))?;
        let value = match tok.token {
            Token::SingleQuotedString(s)
            | Token::EscapedStringLiteral(s)
            | Token::UnicodeStringLiteral(s)
            | Token::NationalStringLiteral(s) => OptionValue::String(s.clone()),
            Token::DollarQuotedString(s) => OptionValue::String(s.value.clone()),
            Token::Number(n, false) => OptionValue::Number(n.clone()),
            Token::Minus | Token::Plus => {
                let sign = if *tok.token == Token::Minus { "-" } else { "" };
                self.index += 1;
                let number = self.peek().and_then(|t| match t.token {
                    Token::Number(n, false) => Some(n),
                    _ => None,
                });
                let n = number.ok_or_else(|| self.error_here(Some("expected a number")))?;
                OptionValue::Number(format!("{sign}{n}"))
            }
            Token::Word(w) if w.quote_style.is_none() => match fold_case(&w.value).as_str() {
                "true" => OptionValue::Bool(true),
                "false" => OptionValue::Bool(false),
                folded => OptionValue::Ident(folded.to_owned()),
            },
            Token::Word(w) if w.value.is_empty() => return Err(zero_length(tok.position)),
            Token::Word(w) => OptionValue::Ident(w.value.clone()),
            _ => return Err(self.error_at(tok, Some(expected))),
        };
        self.index += 1;
        Ok(value)
    }

    // ---- names ------------------------------------------------------------

    /// A name: an unquoted word that PostgreSQL does not reserve, folded to
    /// lower case, or a non-empty double-quoted identifier.
    fn ident(&mut self, what: &str) -> Result<Ident> {
        let expected = format!("expected {what}");
        let tok = self
            .peek()
            .ok_or_else(|| self.error_here(Some(&expected)))?;
        let ident = match tok.token {
            Token::Word(w) if w.quote_style.is_none() => {
                let ident = Ident::from_unquoted(&w.value);
                if is_reserved(&ident.value) {
                    let detail = format!(
                        "\"{}\" is a reserved word; quote it to use it as a name",
                        ident.value
                    );
                    return Err(self.error_at(tok, Some(&detail)));
                }
                ident
            }
            Token::Word(w) if w.quote_style == Some('"') => {
                if w.value.is_empty() {
                    return Err(zero_length(tok.position));
                }
                Ident::quoted(w.value.clone())
            }
            _ => return Err(self.error_at(tok, Some(&expected))),
        };
        self.index += 1;
        Ok(ident)
    }

    /// `name` or `schema.name`.
    fn qualified_name(&mut self, what: &str) -> Result<QualifiedName> {
        let first = self.ident(what)?;
        if !self.consume_token(&Token::Period) {
            return Ok(QualifiedName {
                schema: None,
                name: first,
            });
        }
        let name = self.ident(what)?;
        Ok(QualifiedName {
            schema: Some(first),
            name,
        })
    }

    /// `IF NOT EXISTS`, or nothing. `if` alone may still be a name.
    fn if_not_exists(&mut self) -> Result<bool> {
        if !(self.peek_keyword_at(0, "IF") && self.peek_keyword_at(1, "NOT")) {
            return Ok(false);
        }
        self.index += 2;
        self.expect_keyword("EXISTS", "expected EXISTS after IF NOT")?;
        Ok(true)
    }

    /// `IF EXISTS`, or nothing.
    fn if_exists(&mut self) -> bool {
        let present = self.peek_keyword_at(0, "IF") && self.peek_keyword_at(1, "EXISTS");
        if present {
            self.index += 2;
        }
        present
    }

    // ---- lists ------------------------------------------------------------

    /// `item, item, … close`: at least one item, no trailing comma. The
    /// opening bracket has been consumed.
    fn list<T>(
        &mut self,
        close: &Token,
        close_text: &str,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        loop {
            items.push(item(self)?);
            if self.consume_token(close) {
                return Ok(items);
            }
            self.expect_token(&Token::Comma, &format!("expected , or {close_text}"))?;
            if let Some(tok) = self.peek().filter(|t| t.token == close) {
                return Err(self.error_at(tok, Some("trailing comma is not allowed")));
            }
        }
    }

    // ---- tokens -----------------------------------------------------------

    fn peek(&self) -> Option<Tok<'a>> {
        self.tokens.get(self.index).copied()
    }

    fn peek_keyword_at(&self, offset: usize, keyword: &str) -> bool {
        let token = self.tokens.get(self.index + offset).map(|t| t.token);
        word_is(token, keyword)
    }

    fn consume_keyword(&mut self, keyword: &str) -> bool {
        let present = self.peek_keyword_at(0, keyword);
        if present {
            self.index += 1;
        }
        present
    }

    fn expect_keyword(&mut self, keyword: &str, detail: &str) -> Result<()> {
        if self.consume_keyword(keyword) {
            Ok(())
        } else {
            Err(self.error_here(Some(detail)))
        }
    }

    fn consume_token(&mut self, token: &Token) -> bool {
        let present = self.peek().is_some_and(|t| t.token == token);
        if present {
            self.index += 1;
        }
        present
    }

    fn expect_token(&mut self, token: &Token, detail: &str) -> Result<()> {
        if self.consume_token(token) {
            Ok(())
        } else {
            Err(self.error_here(Some(detail)))
        }
    }

    fn expect_end(&self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(tok) => Err(self.error_at(tok, Some("expected end of statement"))),
        }
    }

    /// The position of the next token, or of the statement's end.
    fn here(&self) -> usize {
        self.peek().map_or(self.end.position(), |t| t.position)
    }

    /// A syntax error at the next token, or at the statement's end.
    fn error_here(&self, detail: Option<&str>) -> ParseError {
        match self.peek() {
            Some(tok) => self.error_at(tok, detail),
            None => with_detail(self.end.syntax_error(), self.end.position(), detail),
        }
    }

    fn error_at(&self, tok: Tok<'_>, detail: Option<&str>) -> ParseError {
        let message = self.source.syntax_error_near(tok.start, tok.end);
        with_detail(message, tok.position, detail)
    }
}

/// PostgreSQL refuses `""` as an identifier.
fn zero_length(position: usize) -> ParseError {
    ParseError::new(
        "zero-length delimited identifier at or near \"\"\"\"",
        position,
    )
}

fn with_detail(message: String, position: usize, detail: Option<&str>) -> ParseError {
    match detail {
        Some(detail) => ParseError::new(format!("{message}: {detail}"), position),
        None => ParseError::new(message, position),
    }
}
