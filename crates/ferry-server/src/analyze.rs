//! Analysis: parsed statements → commands with typed, checked arguments.
//!
//! The parser (`ferry-sql`) knows only syntax. Here a statement's options are typed against
//! what the peer kind accepts, names are checked, and every statement becomes a [`Command`]
//! that the executor runs. Nothing here does I/O.

use ferry_core::layout::{parse_settings, TableLayout};
use ferry_core::mirror::{Destination, Mapping, MirrorOptions, MirrorSpec, TableMapping};
use ferry_core::peer::{OptionValue, PeerConfig, PeerKind};
use ferry_core::TableName;
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
    ResyncMirror {
        name: String,
        /// The tables to load again (an unqualified name means `public`); empty for all.
        tables: Vec<ferry_core::TableName>,
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
        Statement::ResyncMirror(m) => Command::ResyncMirror {
            name: m.name.value.clone(),
            tables: m
                .tables
                .iter()
                .map(|t| {
                    ferry_core::TableName::new(
                        t.schema
                            .as_ref()
                            .map_or_else(|| "public".to_owned(), |s| s.value.clone()),
                        t.name.value.clone(),
                    )
                })
                .collect(),
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
        ferry_sql::Mapping::Tables(entries) => Mapping::Tables(
            entries
                .iter()
                .map(|e| {
                    Ok(TableMapping {
                        // An unqualified source table is in public, as PostgreSQL's search path has it.
                        source: TableName::new(
                            e.source
                                .schema
                                .as_ref()
                                .map_or("public", |s| s.value.as_str()),
                            e.source.name.value.clone(),
                        ),
                        destination: Destination {
                            database: e.destination.schema.as_ref().map(|s| s.value.clone()),
                            table: e.destination.name.value.clone(),
                        },
                        exclude: e.exclude.iter().map(|c| c.value.clone()).collect(),
                        layout: table_layout(e)?,
                    })
                })
                .collect::<Result<_, ClientError>>()?,
        ),
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
