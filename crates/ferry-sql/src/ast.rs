//! The typed statements and their canonical SQL.
//!
//! Every `Display` here prints SQL that [`parse`](crate::parse) reads back to
//! an equal value. Positions are not part of equality: they say where a value
//! was written, not what it is.

use std::fmt;

pub use crate::ident::Ident;
use crate::ident::{is_bare_word, write_quoted};

/// One statement of the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE PEER [IF NOT EXISTS] name FROM type [WITH (options)]`
    CreatePeer(CreatePeer),
    /// `DROP PEER [IF EXISTS] name`
    DropPeer(DropPeer),
    /// `CREATE MIRROR … FROM source TO destination WITH … MAPPING (…) [WITH (options)]`
    CreateMirror(CreateMirror),
    /// `CREATE MIRROR … FROM source TO destination FOR $$query$$ [WITH (options)]`
    CreateQueryMirror(CreateQueryMirror),
    /// `DROP MIRROR [IF EXISTS] name`
    DropMirror(DropMirror),
    /// `PAUSE MIRROR name`
    PauseMirror(MirrorName),
    /// `RESUME MIRROR name`
    ResumeMirror(MirrorName),
    /// `RESYNC MIRROR name [TABLE t [, …]]`
    ResyncMirror(ResyncMirror),
    /// `ALTER MIRROR name {ADD TABLE MAPPING (…) | DROP TABLE MAPPING (…) | SET (…)}`
    AlterMirror(AlterMirror),
    /// `EXECUTE MIRROR name`: a query mirror's next run, now.
    ExecuteMirror(MirrorName),
    /// `RESET name` or `RESET ALL`: PostgreSQL's, which sqlparser does not read.
    Reset(Reset),
    /// Any other statement, parsed by sqlparser with its PostgreSQL dialect.
    Sql(Box<sqlparser::ast::Statement>),
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::CreatePeer(s) => s.fmt(f),
            Statement::DropPeer(s) => s.fmt(f),
            Statement::CreateMirror(s) => s.fmt(f),
            Statement::CreateQueryMirror(s) => s.fmt(f),
            Statement::DropMirror(s) => s.fmt(f),
            Statement::PauseMirror(m) => write!(f, "PAUSE MIRROR {}", m.name),
            Statement::ResumeMirror(m) => write!(f, "RESUME MIRROR {}", m.name),
            Statement::ResyncMirror(m) => m.fmt(f),
            Statement::AlterMirror(m) => m.fmt(f),
            Statement::ExecuteMirror(m) => write!(f, "EXECUTE MIRROR {}", m.name),
            Statement::Reset(r) => write!(f, "RESET {}", r.target),
            Statement::Sql(s) => s.fmt(f),
        }
    }
}

/// `CREATE PEER [IF NOT EXISTS] name FROM type [WITH (options)]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePeer {
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// The peer's name.
    pub name: Ident,
    /// The kind of database the peer is.
    pub peer_type: PeerType,
    /// Connection options in the order written; names are unique.
    pub options: Vec<SqlOption>,
}

impl fmt::Display for CreatePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CREATE PEER ")?;
        if self.if_not_exists {
            f.write_str("IF NOT EXISTS ")?;
        }
        write!(f, "{} FROM {}", self.name, self.peer_type)?;
        write_options(f, &self.options)
    }
}

/// The kind of database a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerType {
    /// `FROM POSTGRES`: a PostgreSQL source.
    Postgres,
    /// `FROM CLICKHOUSE`: a ClickHouse destination.
    Clickhouse,
}

impl PeerType {
    /// Every peer type, in the order error messages list them.
    pub const ALL: [PeerType; 2] = [PeerType::Postgres, PeerType::Clickhouse];

    /// The keyword that names this type: `POSTGRES` or `CLICKHOUSE`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerType::Postgres => "POSTGRES",
            PeerType::Clickhouse => "CLICKHOUSE",
        }
    }

    /// The type named by `word`, ignoring case.
    pub fn from_keyword(word: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for PeerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `DROP PEER [IF EXISTS] name`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropPeer {
    /// `IF EXISTS` was given.
    pub if_exists: bool,
    /// The peer's name.
    pub name: Ident,
}

impl fmt::Display for DropPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DROP PEER ")?;
        if self.if_exists {
            f.write_str("IF EXISTS ")?;
        }
        self.name.fmt(f)
    }
}

/// `DROP MIRROR [IF EXISTS] name`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropMirror {
    /// `IF EXISTS` was given.
    pub if_exists: bool,
    /// The mirror's name.
    pub name: Ident,
}

impl fmt::Display for DropMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DROP MIRROR ")?;
        if self.if_exists {
            f.write_str("IF EXISTS ")?;
        }
        self.name.fmt(f)
    }
}

/// `RESET target`: a setting's name (`search_path`, `myext.level`), a phrase
/// (`TIME ZONE`, `SESSION AUTHORIZATION`) or `ALL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// The target in canonical form: unquoted words in lower case, quoted ones
    /// quoted, separated by a space or joined by `.` as written.
    pub target: String,
}

/// `RESYNC MIRROR name [TABLE t [, …]]`: every table, or the tables named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncMirror {
    /// The mirror's name.
    pub name: Ident,
    /// The source tables to load again; empty for all of them.
    pub tables: Vec<QualifiedName>,
}

impl fmt::Display for ResyncMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RESYNC MIRROR {}", self.name)?;
        for (i, t) in self.tables.iter().enumerate() {
            f.write_str(if i == 0 { " TABLE " } else { ", " })?;
            t.fmt(f)?;
        }
        Ok(())
    }
}

/// `ALTER MIRROR name …`: a change to a mirror while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterMirror {
    /// The mirror's name.
    pub name: Ident,
    /// What changes.
    pub action: AlterMirrorAction,
}

/// What `ALTER MIRROR` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterMirrorAction {
    /// `ADD TABLE MAPPING (…)`: tables to replicate too, written as in `CREATE MIRROR`.
    AddTables(Vec<TableMapping>),
    /// `DROP TABLE MAPPING (t, …)`: source tables to stop replicating.
    DropTables(Vec<QualifiedName>),
    /// `SET (name = value, …)`: options to change.
    Set(Vec<SqlOption>),
}

impl fmt::Display for AlterMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ALTER MIRROR {} ", self.name)?;
        match &self.action {
            AlterMirrorAction::AddTables(t) => {
                f.write_str("ADD TABLE MAPPING (")?;
                write_list(f, t)?;
            }
            AlterMirrorAction::DropTables(t) => {
                f.write_str("DROP TABLE MAPPING (")?;
                write_list(f, t)?;
            }
            AlterMirrorAction::Set(o) => {
                f.write_str("SET (")?;
                write_list(f, o)?;
            }
        }
        f.write_str(")")
    }
}

/// The operand of `PAUSE` and `RESUME MIRROR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorName {
    /// The mirror's name.
    pub name: Ident,
}

/// `CREATE MIRROR [IF NOT EXISTS] name FROM source TO destination
/// WITH {TABLE | SCHEMA} MAPPING (…) [WITH (options)]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateMirror {
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// The mirror's name.
    pub name: Ident,
    /// The source peer.
    pub source: Ident,
    /// The destination peer.
    pub destination: Ident,
    /// What to replicate and where to.
    pub mapping: Mapping,
    /// Mirror options in the order written; names are unique.
    pub options: Vec<SqlOption>,
}

impl fmt::Display for CreateMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CREATE MIRROR ")?;
        if self.if_not_exists {
            f.write_str("IF NOT EXISTS ")?;
        }
        write!(
            f,
            "{} FROM {} TO {} {}",
            self.name, self.source, self.destination, self.mapping
        )?;
        write_options(f, &self.options)
    }
}

/// `CREATE MIRROR [IF NOT EXISTS] name FROM source TO destination FOR $$query$$
/// [WITH (options)]`: a query mirror (PeerDB's query replication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateQueryMirror {
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// The mirror's name.
    pub name: Ident,
    /// The source peer.
    pub source: Ident,
    /// The destination peer.
    pub destination: Ident,
    /// The query as written between the dollar quotes (see [`crate::query`]).
    pub query: String,
    /// Mirror options in the order written; names are unique.
    pub options: Vec<SqlOption>,
}

impl fmt::Display for CreateQueryMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CREATE MIRROR ")?;
        if self.if_not_exists {
            f.write_str("IF NOT EXISTS ")?;
        }
        write!(
            f,
            "{} FROM {} TO {} FOR ",
            self.name, self.source, self.destination
        )?;
        write_dollar_quoted(f, &self.query)?;
        write_options(f, &self.options)
    }
}

/// `$$text$$`, or `$q$text$q$` (`$q1$`, …) when the text holds `$$`, ends in `$` or holds
/// the tag: the body of a dollar-quoted string ends at the first closing tag.
fn write_dollar_quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let mut tag = String::new();
    let mut n = 0u32;
    while text.contains(&format!("${tag}$")) || (tag.is_empty() && text.ends_with('$')) {
        tag = if n == 0 {
            "q".to_owned()
        } else {
            format!("q{n}")
        };
        n += 1;
    }
    write!(f, "${tag}${text}${tag}$")
}

/// The mapping of a mirror: a list of tables or a list of whole schemas.
/// The parser never produces an empty list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// `WITH TABLE MAPPING (…)`
    Tables(Vec<TableMapping>),
    /// `WITH SCHEMA MAPPING (…)`
    Schemas(Vec<SchemaMapping>),
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mapping::Tables(tables) => {
                f.write_str("WITH TABLE MAPPING (")?;
                write_list(f, tables)?;
            }
            Mapping::Schemas(schemas) => {
                f.write_str("WITH SCHEMA MAPPING (")?;
                write_list(f, schemas)?;
            }
        }
        f.write_str(")")
    }
}

/// One table of a table mapping: `source:destination`, or
/// `{ from: source, to: destination, exclude: [column, …], layout keys… }`.
#[derive(Debug, Clone, Eq)]
pub struct TableMapping {
    /// The source table; without a schema when none was written.
    pub source: QualifiedName,
    /// The destination table.
    pub destination: QualifiedName,
    /// Source columns not to replicate.
    pub exclude: Vec<Ident>,
    /// How the destination table is laid out (`order_by`, `partition_by`, `settings`,
    /// `column_types`), in the order written.
    pub options: Vec<MappingOption>,
    /// 1-based character offset of the entry in the input (0 if built in code).
    pub position: usize,
}

/// Ignores `position`.
impl PartialEq for TableMapping {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && self.destination == other.destination
            && self.exclude == other.exclude
            && self.options == other.options
    }
}

impl fmt::Display for TableMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exclude.is_empty() && self.options.is_empty() {
            return write!(f, "{}:{}", self.source, self.destination);
        }
        write!(f, "{{from: {}, to: {}", self.source, self.destination)?;
        if !self.exclude.is_empty() {
            f.write_str(", exclude: [")?;
            write_list(f, &self.exclude)?;
            f.write_str("]")?;
        }
        for o in &self.options {
            write!(f, ", {o}")?;
        }
        f.write_str("}")
    }
}

/// A layout key of a table mapping entry.
#[derive(Debug, Clone, Eq)]
pub struct MappingOption {
    /// `order_by`, `partition_by`, `settings` or `column_types`.
    pub key: String,
    /// What follows the colon.
    pub value: MappingValue,
    /// 1-based character offset of the key in the input (0 if built in code).
    pub position: usize,
}

/// Ignores `position`.
impl PartialEq for MappingOption {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.value == other.value
    }
}

/// The value of a mapping's layout key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingValue {
    /// `[a, b]`
    Columns(Vec<Ident>),
    /// `'text'`
    Text(String),
    /// `{column: 'Type', …}`
    Types(Vec<(Ident, String)>),
}

fn write_text(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("'")?;
    f.write_str(&s.replace('\'', "''"))?;
    f.write_str("'")
}

impl fmt::Display for MappingOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.key)?;
        match &self.value {
            MappingValue::Columns(c) => {
                f.write_str("[")?;
                write_list(f, c)?;
                f.write_str("]")
            }
            MappingValue::Text(s) => write_text(f, s),
            MappingValue::Types(types) => {
                f.write_str("{")?;
                for (i, (c, t)) in types.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{c}: ")?;
                    write_text(f, t)?;
                }
                f.write_str("}")
            }
        }
    }
}

/// One schema of a schema mapping: `source:destination`.
#[derive(Debug, Clone, Eq)]
pub struct SchemaMapping {
    /// The source schema.
    pub source: Ident,
    /// The destination schema (a ClickHouse database).
    pub destination: Ident,
    /// 1-based character offset of the entry in the input (0 if built in code).
    pub position: usize,
}

/// Ignores `position`.
impl PartialEq for SchemaMapping {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.destination == other.destination
    }
}

impl fmt::Display for SchemaMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.destination)
    }
}

/// A table name with an optional schema: `orders` or `public.orders`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    /// The schema, if one was written.
    pub schema: Option<Ident>,
    /// The table.
    pub name: Ident,
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{schema}.")?;
        }
        self.name.fmt(f)
    }
}

/// One `name = value` of a `WITH (…)` list.
#[derive(Debug, Clone, Eq)]
pub struct SqlOption {
    /// The option's name, lower-cased.
    pub name: String,
    /// The option's value.
    pub value: OptionValue,
    /// 1-based character offset of the name in the input (0 if built in code).
    pub position: usize,
}

/// Ignores `position`.
impl PartialEq for SqlOption {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.value == other.value
    }
}

impl fmt::Display for SqlOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_bare_word(&self.name) {
            f.write_str(&self.name)?;
        } else {
            write_quoted(f, &self.name)?;
        }
        write!(f, " = {}", self.value)
    }
}

/// The value of an option, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// A string literal (`'…'`, `E'…'` or `$$…$$`), unescaped.
    String(String),
    /// A numeric literal's text, with its sign: `5432`, `-1`, `0.5`, `1e6`.
    Number(String),
    /// `true` or `false` (unquoted, any case).
    Bool(bool),
    /// Any other word: unquoted ones are lower-cased, quoted ones kept as is.
    Ident(String),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::String(s) => {
                f.write_str("'")?;
                f.write_str(&s.replace('\'', "''"))?;
                f.write_str("'")
            }
            OptionValue::Number(n) => f.write_str(n),
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::Ident(word) => {
                // A bare `true` would read back as a boolean.
                if is_bare_word(word) && word != "true" && word != "false" {
                    f.write_str(word)
                } else {
                    write_quoted(f, word)
                }
            }
        }
    }
}

/// ` WITH (a = 1, b = 'x')`, or nothing for an empty list.
fn write_options(f: &mut fmt::Formatter<'_>, options: &[SqlOption]) -> fmt::Result {
    if options.is_empty() {
        return Ok(());
    }
    f.write_str(" WITH (")?;
    write_list(f, options)?;
    f.write_str(")")
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        item.fmt(f)?;
    }
    Ok(())
}
