//! Analysis: parsed statements → commands with typed, checked arguments.
//!
//! The parser (`ferry-sql`) knows only syntax. Here a statement's options are typed against
//! what the peer kind accepts, names are checked, and every statement becomes a [`Command`]
//! that the executor runs. Nothing here does I/O.

use ferry_core::layout::{parse_settings, TableLayout};
use ferry_core::mirror::{Destination, Mapping, MirrorOptions, MirrorSpec, TableMapping};
use ferry_core::peer::{OptionValue, PeerConfig, PeerKind};
use ferry_core::qrep::{QueryOptions, QuerySpec, WatermarkSource};
use ferry_core::TableName;
use ferry_sql::query::{parse_query, Placeholder};
use ferry_sql::MappingValue;
use ferry_sql::{Parsed, PassThrough, PeerType, SqlOption, Statement};

use crate::error::{code, ClientError};

/// PostgreSQL's limit on identifier length (NAMEDATALEN - 1).
const MAX_NAME_BYTES: usize = 63;

/// What the executor is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    CreatePeer {
        name: String,
        if_not_exists: bool,
        config: PeerConfig,
    },
    DropPeer {
        name: String,
        if_exists: bool,
    },
    CreateMirror {
        name: String,
        if_not_exists: bool,
        source: String,
        destination: String,
        spec: MirrorSpec,
    },
    /// `CREATE MIRROR … FOR $$query$$`: a query mirror.
    CreateQueryMirror {
        name: String,
        if_not_exists: bool,
        source: String,
        destination: String,
        spec: QuerySpec,
    },
    DropMirror {
        name: String,
        if_exists: bool,
    },
    PauseMirror {
        name: String,
    },
    ResumeMirror {
        name: String,
    },
    AlterMirror {
        name: String,
        change: ferry_core::mirror::MirrorChange,
    },
    ResyncMirror {
        name: String,
        /// The tables to load again (an unqualified name means `public`); empty for all.
        tables: Vec<ferry_core::TableName>,
    },
    /// A query mirror's next run, now.
    ExecuteMirror {
        name: String,
    },
    /// A statement run against the catalog database in a read-only transaction, as the
    /// reader role; the parser's allow-list passed it (`ferry_sql::pass_through`).
    Catalog {
        text: String,
        offset: usize,
    },
    /// Transaction control, `SET`, `RESET` and `DISCARD`, answered without touching the
    /// catalog: every catalog statement runs in a read-only transaction of its own, with
    /// fixed settings, so there is nothing for them to change.
    Local {
        tag: &'static str,
    },
}

/// Turns one parsed statement into a command.
pub fn analyze(parsed: &Parsed<'_>) -> Result<Command, ClientError> {
    Ok(match &parsed.statement {
        Statement::CreatePeer(p) => {
            let name = check_name("peer", &p.name.value)?;
            let kind = match p.peer_type {
                PeerType::Postgres => PeerKind::Postgres,
                PeerType::Clickhouse => PeerKind::Clickhouse,
            };
            let options = typed_options(&p.options);
            let config = PeerConfig::from_options(kind, &options).map_err(|e| {
                let position = option_position(&e, &p.options);
                let mut c = ClientError::from(e);
                c.position = position;
                c
            })?;
            Command::CreatePeer {
                name,
                if_not_exists: p.if_not_exists,
                config,
            }
        }
        Statement::DropPeer(p) => Command::DropPeer {
            name: p.name.value.clone(),
            if_exists: p.if_exists,
        },
        Statement::CreateMirror(m) => analyze_create_mirror(m)?,
        Statement::CreateQueryMirror(m) => analyze_create_query_mirror(m)?,
        Statement::ExecuteMirror(m) => Command::ExecuteMirror {
            name: m.name.value.clone(),
        },
        Statement::DropMirror(m) => Command::DropMirror {
            name: m.name.value.clone(),
            if_exists: m.if_exists,
        },
        Statement::PauseMirror(m) => Command::PauseMirror {
            name: m.name.value.clone(),
        },
        Statement::ResumeMirror(m) => Command::ResumeMirror {
            name: m.name.value.clone(),
        },
        Statement::AlterMirror(m) => analyze_alter_mirror(m)?,
        Statement::ResyncMirror(m) => Command::ResyncMirror {
            name: m.name.value.clone(),
            tables: m.tables.iter().map(source_table).collect(),
        },
        Statement::Reset(_) => Command::Local { tag: "RESET" },
        Statement::Sql(stmt) => match ferry_sql::pass_through(stmt, parsed.text) {
            Ok(PassThrough::Local(tag)) => Command::Local { tag },
            Ok(PassThrough::Catalog) => Command::Catalog {
                text: parsed.text.to_owned(),
                offset: parsed.offset,
            },
            Err(refusal) => {
                let mut e = ClientError::new(refusal.kind.sqlstate(), refusal.message);
                e.hint = refusal.hint;
                return Err(e);
            }
        },
    })
}

fn analyze_create_mirror(m: &ferry_sql::CreateMirror) -> Result<Command, ClientError> {
    let name = check_name("mirror", &m.name.value)?;
    let options = typed_options(&m.options);
    let options = MirrorOptions::from_options(&options).map_err(|e| {
        let position = option_position(&e, &m.options);
        let mut c = ClientError::from(e);
        c.position = position;
        c
    })?;
    let mapping = match &m.mapping {
        ferry_sql::Mapping::Tables(entries) => Mapping::Tables(table_mappings(entries)?),
        ferry_sql::Mapping::Schemas(pairs) => Mapping::Schemas(
            pairs
                .iter()
                .map(|p| (p.source.value.clone(), p.destination.value.clone()))
                .collect(),
        ),
    };
    Ok(Command::CreateMirror {
        name,
        if_not_exists: m.if_not_exists,
        source: m.source.value.clone(),
        destination: m.destination.value.clone(),
        spec: MirrorSpec { mapping, options },
    })
}

/// A mapping entry's layout keys, typed; a settings text that cannot be read is an error at
/// its key.
fn table_layout(e: &ferry_sql::TableMapping) -> Result<TableLayout, ClientError> {
    let mut layout = TableLayout::default();
    for o in &e.options {
        match (o.key.as_str(), &o.value) {
            ("order_by", MappingValue::Columns(c)) => {
                layout.order_by = Some(c.iter().map(|c| c.value.clone()).collect());
            }
            ("partition_by", MappingValue::Text(t)) => layout.partition_by = Some(t.clone()),
            ("settings", MappingValue::Text(t)) => {
                layout.settings = parse_settings(t).map_err(|err| {
                    let mut c = ClientError::new(
                        "22023",
                        format!("settings of the mapping of {}: {err}", e.source),
                    );
                    c.position = Some(o.position).filter(|p| *p > 0);
                    c
                })?;
            }
            ("column_types", MappingValue::Types(t)) => {
                layout.column_types = t
                    .iter()
                    .map(|(c, ty)| (c.value.clone(), ty.clone()))
                    .collect();
            }
            (key, _) => {
                return Err(ClientError::new(
                    code::SYNTAX_ERROR,
                    format!("unexpected value for {key} in a table mapping"),
                ))
            }
        }
    }
    Ok(layout)
}

/// Table mapping entries, typed. An unqualified source table is in public, as PostgreSQL's
/// search path has it.
fn table_mappings(entries: &[ferry_sql::TableMapping]) -> Result<Vec<TableMapping>, ClientError> {
    entries
        .iter()
        .map(|e| {
            Ok(TableMapping {
                source: source_table(&e.source),
                destination: Destination {
                    database: e.destination.schema.as_ref().map(|s| s.value.clone()),
                    table: e.destination.name.value.clone(),
                },
                exclude: e.exclude.iter().map(|c| c.value.clone()).collect(),
                layout: table_layout(e)?,
            })
        })
        .collect()
}

/// A source table name; without a schema, in public.
fn source_table(name: &ferry_sql::QualifiedName) -> TableName {
    TableName::new(
        name.schema.as_ref().map_or("public", |s| s.value.as_str()),
        name.name.value.clone(),
    )
}

fn analyze_alter_mirror(m: &ferry_sql::AlterMirror) -> Result<Command, ClientError> {
    use ferry_core::mirror::MirrorChange;
    let change = match &m.action {
        ferry_sql::AlterMirrorAction::AddTables(t) => MirrorChange::AddTables(table_mappings(t)?),
        ferry_sql::AlterMirrorAction::DropTables(t) => {
            MirrorChange::DropTables(t.iter().map(source_table).collect())
        }
        ferry_sql::AlterMirrorAction::Set(o) => MirrorChange::Set(typed_options(o)),
    };
    Ok(Command::AlterMirror {
        name: check_name("mirror", &m.name.value)?,
        change,
    })
}

/// A query mirror: its options typed, its query checked against them. What needs the servers
/// (the query's columns, the watermark column's type, the destination table) is checked by
/// the engine before anything is created.
fn analyze_create_query_mirror(m: &ferry_sql::CreateQueryMirror) -> Result<Command, ClientError> {
    let name = check_name("mirror", &m.name.value)?;
    let query = parse_query(&m.query).map_err(|e| {
        let mut c = ClientError::new(
            code::SYNTAX_ERROR,
            format!("the query of mirror \"{name}\": {}", e.message),
        );
        c.hint = e.hint;
        c
    })?;
    // PeerDB's scripts often leave watermark_table_name out: it is the table the query reads.
    let read = query
        .single_table()
        .map(|(schema, table)| TableName::new(schema.unwrap_or("public"), table));
    let options = typed_options(&m.options);
    let options = QueryOptions::from_options(&options, read).map_err(|e| {
        let position = option_position(&e, &m.options);
        let mut c = ClientError::from(e);
        c.position = position;
        c
    })?;
    let invalid = |message: String, hint: &str| {
        ClientError::new(code::INVALID_PARAMETER_VALUE, message).with_hint(hint)
    };
    let (start, end) = (query.has(Placeholder::Start), query.has(Placeholder::End));
    match &options.watermark {
        Some(WatermarkSource::Xmin { table }) => {
            if start || end {
                return Err(invalid(
                    "with watermark_column = 'xmin' the query takes no {{.start}} or {{.end}}: \
                     Ferry picks each run's rows by their transaction id"
                        .into(),
                    "Write the query without placeholders: SELECT … FROM table [WHERE …].",
                ));
            }
            let Some((schema, read)) = query.single_table() else {
                return Err(ClientError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    "with watermark_column = 'xmin' the query must read one table: \
                     SELECT … FROM table [[AS] alias] [WHERE condition]",
                )
                .with_hint(
                    "Ferry adds its own condition on the table's xmin to the query's WHERE; \
                     joins, grouping, ordering and set operations leave no place for it.",
                ));
            };
            if read != table.name || schema.is_some_and(|s| s != table.schema) {
                return Err(invalid(
                    format!(
                        "the query reads {}{read}, but watermark_table_name is {table}",
                        schema.map(|s| format!("{s}.")).unwrap_or_default()
                    ),
                    "With xmin the watermark table is the table the query reads.",
                ));
            }
        }
        Some(WatermarkSource::Column { table, column }) => {
            // Both placeholders, or (a query read whole, once) neither.
            let whole = options.initial_copy_only && !start && !end;
            if !(start && end || whole) {
                let missing = if start { "{{.end}}" } else { "{{.start}}" };
                return Err(invalid(
                    format!(
                        "the query has no {missing}: each run reads the rows whose {column} is \
                         between {{{{.start}}}} and {{{{.end}}}}"
                    ),
                    &format!(
                        "Write the range into the query, e.g. WHERE {column} BETWEEN {{{{.start}}}} AND {{{{.end}}}}."
                    ),
                ));
            }
            if start && !query.mentions(&table.name) {
                return Err(invalid(
                    format!("the query does not mention the watermark table {table}"),
                    "watermark_table_name names the table whose watermark_column the query's range is on.",
                ));
            }
            if start && !query.mentions(column) {
                return Err(invalid(
                    format!("the query does not mention the watermark column {column}"),
                    &format!(
                        "Compare the column with the placeholders: WHERE {column} BETWEEN {{{{.start}}}} AND {{{{.end}}}}."
                    ),
                ));
            }
        }
        None => {
            if start || end {
                return Err(invalid(
                    "the query has {{.start}} or {{.end}}, but no watermark_column gives them values"
                        .into(),
                    "Name the column and its table: watermark_column = '…', watermark_table_name = '…'.",
                ));
            }
        }
    }
    Ok(Command::CreateQueryMirror {
        name,
        if_not_exists: m.if_not_exists,
        source: m.source.value.clone(),
        destination: m.destination.value.clone(),
        spec: QuerySpec {
            query: m.query.clone(),
            options,
        },
    })
}

fn check_name(what: &str, name: &str) -> Result<String, ClientError> {
    if name.is_empty() {
        return Err(ClientError::new(
            code::SYNTAX_ERROR,
            format!("{what} name must not be empty"),
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ClientError::new(
            "42622",
            format!("{what} name \"{name}\" is longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    Ok(name.to_owned())
}

fn typed_options(options: &[SqlOption]) -> Vec<(String, OptionValue)> {
    options
        .iter()
        .map(|o| {
            let v = match &o.value {
                ferry_sql::OptionValue::String(s) => OptionValue::String(s.clone()),
                ferry_sql::OptionValue::Number(n) => OptionValue::Number(n.clone()),
                ferry_sql::OptionValue::Bool(b) => OptionValue::Bool(*b),
                ferry_sql::OptionValue::Ident(s) => OptionValue::Ident(s.clone()),
            };
            (o.name.clone(), v)
        })
        .collect()
}

/// Where the option an error names was written, for the error's position.
fn option_position(e: &ferry_core::peer::OptionError, options: &[SqlOption]) -> Option<usize> {
    use ferry_core::peer::OptionError as E;
    let name = match e {
        E::Unknown { name, .. } | E::WrongType { name, .. } | E::Duplicate { name } => {
            name.as_str()
        }
        E::Missing { .. } => return None,
    };
    options
        .iter()
        .find(|o| o.name == name)
        .map(|o| o.position)
        .filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Result<Command, ClientError> {
        let parsed = ferry_sql::parse_spanned(sql).map_err(ClientError::from)?;
        analyze(&parsed[0])
    }

    #[test]
    fn create_peer_types_options() {
        let c = one("CREATE PEER src FROM POSTGRES WITH (host='h', port=1, user='u', password='p', database='d')")
            .unwrap();
        let Command::CreatePeer {
            name,
            config: PeerConfig::Postgres(pg),
            ..
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!(
            (name.as_str(), pg.port, pg.password.as_str()),
            ("src", 1, "p")
        );
    }

    #[test]
    fn unknown_option_points_at_it() {
        let sql = "CREATE PEER c FROM CLICKHOUSE WITH (host = 'h', colour = 'red')";
        let e = one(sql).unwrap_err();
        assert_eq!(e.sqlstate, code::SYNTAX_ERROR);
        assert!(e.message.contains("\"colour\""), "{e:?}");
        assert_eq!(e.position, Some(sql.find("colour").unwrap() + 1));
        assert!(e.hint.unwrap().contains("disable_tls"));
    }

    #[test]
    fn wrong_type_and_missing() {
        let e = one("CREATE PEER c FROM CLICKHOUSE WITH (host = 'h', port = 'x')").unwrap_err();
        assert_eq!(e.sqlstate, code::INVALID_PARAMETER_VALUE);
        let e = one("CREATE PEER c FROM POSTGRES WITH (host = 'h', user = 'u')").unwrap_err();
        assert!(e.message.contains("\"database\""), "{e:?}");
    }

    #[test]
    fn create_mirror_maps_tables_and_options() {
        let c = one(
            "CREATE MIRROR m FROM s TO d WITH TABLE MAPPING (orders:o, public.users:analytics.users, \
             { from: x.events, to: events, exclude: [raw] }) WITH (do_initial_copy = true)",
        )
        .unwrap();
        let Command::CreateMirror { spec, .. } = c else {
            panic!("{c:?}")
        };
        let Mapping::Tables(t) = spec.mapping else {
            panic!()
        };
        assert_eq!(t[0].source, TableName::new("public", "orders"));
        assert_eq!(
            t[1].destination,
            Destination {
                database: Some("analytics".into()),
                table: "users".into()
            }
        );
        assert_eq!(
            (t[2].source.schema.as_str(), t[2].exclude.as_slice()),
            ("x", ["raw".to_string()].as_slice())
        );
        let e = one("CREATE MIRROR m FROM s TO d WITH TABLE MAPPING (a:b)").unwrap_err();
        assert!(e.message.contains("do_initial_copy"), "{e:?}");
    }

    #[test]
    fn query_mirrors_are_typed_and_checked() {
        let c = one(
            "CREATE MIRROR q FROM s TO d FOR $$SELECT * FROM public.ev WHERE at BETWEEN {{.start}} AND {{.end}}$$
             WITH (destination_table_name = 'dw.ev', watermark_column = 'at', watermark_table_name = 'ev',
                   mode = 'upsert', unique_key_columns = 'id')",
        )
        .unwrap();
        let Command::CreateQueryMirror { spec, .. } = c else {
            panic!("{c:?}")
        };
        assert_eq!(spec.options.mode.unique_key(), ["id"]);
        assert_eq!(
            spec.options.watermark,
            Some(WatermarkSource::Column {
                table: TableName::new("public", "ev"),
                column: "at".into()
            })
        );
        let sql = "CREATE MIRROR q FROM s TO d FOR $$SELECT 1$$ WITH (initial_copy_only = true, \
                   destination_table_name = 't', sideways = 1)";
        let e = one(sql).unwrap_err();
        assert_eq!(e.position, Some(sql.find("sideways").unwrap() + 1));
        assert_eq!(
            one("EXECUTE MIRROR q").unwrap(),
            Command::ExecuteMirror { name: "q".into() }
        );
    }

    #[test]
    fn long_names_are_refused() {
        let sql = format!(
            "DROP PEER x; CREATE PEER {} FROM CLICKHOUSE WITH (host='h')",
            "a".repeat(64)
        );
        let parsed = ferry_sql::parse_spanned(&sql).unwrap();
        assert_eq!(analyze(&parsed[1]).unwrap_err().sqlstate, "42622");
    }

    #[test]
    fn sql_passes_through_with_its_text_and_transactions_are_local() {
        let c = one("  select 1 ").unwrap();
        assert_eq!(
            c,
            Command::Catalog {
                text: "select 1".into(),
                offset: 2
            }
        );
        assert_eq!(one("BEGIN").unwrap(), Command::Local { tag: "BEGIN" });
        assert_eq!(one("commit").unwrap(), Command::Local { tag: "COMMIT" });
        assert_eq!(one("RESET ALL").unwrap(), Command::Local { tag: "RESET" });
    }

    #[test]
    fn refused_statements_carry_their_sqlstate_and_a_hint() {
        for (sql, code) in [
            (
                "COPY (SELECT 1) TO PROGRAM 'id'",
                code::FEATURE_NOT_SUPPORTED,
            ),
            (
                "SELECT pg_read_file('/etc/hostname')",
                code::INSUFFICIENT_PRIVILEGE,
            ),
            ("DELETE FROM peers", "25006"),
        ] {
            let e = one(sql).unwrap_err();
            assert_eq!(e.sqlstate, code, "{sql}");
            assert!(e.hint.is_some(), "{sql}");
        }
    }
}
