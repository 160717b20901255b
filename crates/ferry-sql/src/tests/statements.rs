//! What the parser produces: values, positions, splitting into statements.

use super::parse_one;
use crate::{
    parse, CreateMirror, CreatePeer, DropMirror, DropPeer, Ident, Mapping, MirrorName, OptionValue,
    PeerType, QualifiedName, ResyncMirror, SchemaMapping, SqlOption, Statement, TableMapping,
};

fn option(name: &str, value: OptionValue, position: usize) -> SqlOption {
    SqlOption {
        name: name.to_owned(),
        value,
        position,
    }
}

fn table(schema: Option<&str>, name: &str) -> QualifiedName {
    QualifiedName {
        schema: schema.map(Ident::new),
        name: Ident::new(name),
    }
}

#[test]
fn query_mirrors_and_execute() {
    let sql = "CREATE MIRROR q FROM s TO d FOR $$SELECT * FROM t WHERE id BETWEEN {{.start}} AND \
               {{.end}}$$ WITH (destination_table_name = 't')";
    let Statement::CreateQueryMirror(m) = parse_one(sql) else {
        panic!("{sql}")
    };
    assert_eq!(
        m.query,
        "SELECT * FROM t WHERE id BETWEEN {{.start}} AND {{.end}}"
    );
    assert_eq!(m.options[0].name, "destination_table_name");
    assert_eq!(
        parse_one("execute mirror Q"),
        Statement::ExecuteMirror(MirrorName {
            name: Ident::new("q")
        })
    );
    // PostgreSQL's EXECUTE of a prepared statement stays SQL.
    assert!(matches!(parse_one("EXECUTE mirror"), Statement::Sql(_)));
    assert!(matches!(parse_one("EXECUTE stmt(1)"), Statement::Sql(_)));
}

#[test]
fn create_peer_values() {
    let sql = "CREATE PEER IF NOT EXISTS Src FROM postgres WITH (Host = 'db', port = 5432, \
               ssl = true, mode = Prefer, neg = -1, frac = 0.5)";
    let expected = Statement::CreatePeer(CreatePeer {
        if_not_exists: true,
        name: Ident::new("src"),
        peer_type: PeerType::Postgres,
        options: vec![
            option("host", OptionValue::String("db".into()), 51),
            option("port", OptionValue::Number("5432".into()), 64),
            option("ssl", OptionValue::Bool(true), 77),
            option("mode", OptionValue::Ident("prefer".into()), 89),
            option("neg", OptionValue::Number("-1".into()), 104),
            option("frac", OptionValue::Number("0.5".into()), 114),
        ],
    });
    let parsed = parse_one(sql);
    assert_eq!(parsed, expected);
    let Statement::CreatePeer(peer) = parsed else {
        unreachable!()
    };
    let positions: Vec<usize> = peer.options.iter().map(|o| o.position).collect();
    assert_eq!(positions, [51, 64, 77, 89, 104, 114]);
    for o in &peer.options {
        let at: String = sql
            .chars()
            .skip(o.position - 1)
            .take(o.name.len())
            .collect();
        assert!(at.eq_ignore_ascii_case(&o.name), "{at:?} vs {:?}", o.name);
    }
}

#[test]
fn quoted_identifiers_keep_case_and_unquoted_fold() {
    assert_eq!(
        parse_one("DROP PEER \"MyPeer\""),
        Statement::DropPeer(DropPeer {
            if_exists: false,
            name: Ident::quoted("MyPeer"),
        })
    );
    assert_eq!(
        parse_one("DROP MIRROR IF EXISTS MyMirror"),
        Statement::DropMirror(DropMirror {
            if_exists: true,
            name: Ident::new("mymirror"),
        })
    );
    assert_eq!(
        parse_one("RESYNC MIRROR \"with \"\"quote\"\"\""),
        Statement::ResyncMirror(ResyncMirror {
            name: Ident::quoted("with \"quote\""),
            tables: Vec::new(),
        })
    );
    assert_eq!(
        parse_one("resync mirror m table public.t, \"Odd\""),
        Statement::ResyncMirror(ResyncMirror {
            name: Ident::new("m"),
            tables: vec![
                QualifiedName {
                    schema: Some(Ident::new("public")),
                    name: Ident::new("t"),
                },
                QualifiedName {
                    schema: None,
                    name: Ident::quoted("Odd"),
                },
            ],
        })
    );
}

#[test]
fn pause_and_resume() {
    assert_eq!(
        parse_one("pause mirror m"),
        Statement::PauseMirror(MirrorName {
            name: Ident::new("m")
        })
    );
    assert_eq!(
        parse_one("Resume Mirror m"),
        Statement::ResumeMirror(MirrorName {
            name: Ident::new("m")
        })
    );
}

#[test]
fn create_mirror_values_and_positions() {
    let sql = "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING (\n\
               public.orders:orders,\n\
               {to: events, exclude: [payload_raw, \"Other Col\"], from: public.events}\n\
               ) WITH (sync_interval = 1)";
    let expected = Statement::CreateMirror(CreateMirror {
        if_not_exists: false,
        name: Ident::new("m"),
        source: Ident::new("pg"),
        destination: Ident::new("ch"),
        mapping: Mapping::Tables(vec![
            TableMapping {
                source: table(Some("public"), "orders"),
                destination: table(None, "orders"),
                exclude: vec![],
                options: vec![],
                position: 52,
            },
            TableMapping {
                source: table(Some("public"), "events"),
                destination: table(None, "events"),
                exclude: vec![Ident::new("payload_raw"), Ident::quoted("Other Col")],
                options: vec![],
                position: 74,
            },
        ]),
        options: vec![option(
            "sync_interval",
            OptionValue::Number("1".into()),
            153,
        )],
    });
    let parsed = parse_one(sql);
    assert_eq!(parsed, expected);
    let Statement::CreateMirror(mirror) = parsed else {
        unreachable!()
    };
    let Mapping::Tables(tables) = &mirror.mapping else {
        unreachable!()
    };
    assert_eq!(tables[0].position, 52);
    assert_eq!(tables[1].position, 74);
    assert_eq!(mirror.options[0].position, 153);
}

#[test]
fn schema_mapping_values() {
    let sql = "CREATE MIRROR m FROM pg TO ch WITH SCHEMA MAPPING (public:analytics, \"Sales\":dw)";
    let Statement::CreateMirror(mirror) = parse_one(sql) else {
        panic!("not a mirror")
    };
    assert_eq!(
        mirror.mapping,
        Mapping::Schemas(vec![
            SchemaMapping {
                source: Ident::new("public"),
                destination: Ident::new("analytics"),
                position: 52,
            },
            SchemaMapping {
                source: Ident::quoted("Sales"),
                destination: Ident::new("dw"),
                position: 70,
            },
        ])
    );
    assert!(mirror.options.is_empty());
    let Mapping::Schemas(schemas) = &mirror.mapping else {
        unreachable!()
    };
    assert_eq!([schemas[0].position, schemas[1].position], [52, 70]);
}

#[test]
fn positions_count_characters_across_statements() {
    // Four two-byte characters before the option: offsets are in characters.
    let sql = "SELECT 'éééé';\nCREATE PEER p FROM POSTGRES WITH (host = 'h')";
    let statements = parse(sql).expect("parses");
    let Statement::CreatePeer(peer) = &statements[1] else {
        panic!("not a peer")
    };
    let expected = sql.chars().position(|c| c == 'h').map(|i| i + 1);
    assert_eq!(Some(peer.options[0].position), expected);
    assert_eq!(peer.options[0].position, 50);
}

#[test]
fn multiple_statements_mixed() {
    let sql = "SELECT 1; CREATE PEER p FROM CLICKHOUSE; select name from peers;\n\
               DROP PEER p; PAUSE MIRROR m";
    let statements = parse(sql).expect("parses");
    assert_eq!(statements.len(), 5);
    assert!(matches!(statements[0], Statement::Sql(_)));
    assert!(matches!(statements[1], Statement::CreatePeer(_)));
    assert!(matches!(statements[2], Statement::Sql(_)));
    assert!(matches!(statements[3], Statement::DropPeer(_)));
    assert!(matches!(statements[4], Statement::PauseMirror(_)));
    assert_eq!(statements[2].to_string(), "SELECT name FROM peers");
}

#[test]
fn empty_input_and_empty_statements() {
    for sql in [
        "",
        "   ",
        ";",
        ";;",
        " ; ;\n;",
        "-- only a comment",
        "/* c */ ; -- x\n",
    ] {
        assert_eq!(parse(sql), Ok(vec![]), "{sql:?}");
    }
    let statements = parse(";;SELECT 1;;;DROP PEER p;;").expect("parses");
    assert_eq!(statements.len(), 2);
}

#[test]
fn comments_anywhere() {
    let sql = "/* lead */ CREATE -- one\n PEER /* two; three */ p -- four; five\n\
               FROM /**/ POSTGRES WITH ( -- six\n host = 'h;x' /* seven */ );\n\
               -- trailing; comment\nSELECT 1 -- done";
    let statements = parse(sql).expect("parses");
    assert_eq!(statements.len(), 2);
    assert_eq!(
        statements[0].to_string(),
        "CREATE PEER p FROM POSTGRES WITH (host = 'h;x')"
    );
}

#[test]
fn semicolons_inside_tokens_do_not_split() {
    let sql = "CREATE PEER \"a;b\" FROM POSTGRES WITH (p = 'x;y', q = $$;$$); SELECT ';'";
    let statements = parse(sql).expect("parses");
    assert_eq!(statements.len(), 2);
    let Statement::CreatePeer(peer) = &statements[0] else {
        panic!("not a peer")
    };
    assert_eq!(peer.name, Ident::quoted("a;b"));
    assert_eq!(peer.options[1].value, OptionValue::String(";".into()));
}

#[test]
fn lookalikes_fall_through_to_sqlparser() {
    for sql in [
        "CREATE TABLE peer (id INT)",
        "DROP TABLE mirror",
        "SELECT * FROM mirror",
        "CREATE VIEW peers AS SELECT 1",
    ] {
        assert!(matches!(parse_one(sql), Statement::Sql(_)), "{sql:?}");
    }
}

#[test]
fn string_option_values_are_unescaped() {
    let Statement::CreatePeer(peer) =
        parse_one("CREATE PEER p FROM POSTGRES WITH (a = 'it''s', b = E'x\\ty', c = 'C:\\dir')")
    else {
        panic!("not a peer")
    };
    let values: Vec<&OptionValue> = peer.options.iter().map(|o| &o.value).collect();
    assert_eq!(
        values,
        [
            &OptionValue::String("it's".into()),
            &OptionValue::String("x\ty".into()),
            &OptionValue::String("C:\\dir".into()),
        ]
    );
}

#[test]
fn equality_ignores_positions() {
    let a = option("port", OptionValue::Number("1".into()), 3);
    let b = option("port", OptionValue::Number("1".into()), 30);
    assert_eq!(a, b);
    assert_ne!(a, option("port", OptionValue::Number("2".into()), 3));
}

#[test]
fn spanned_keeps_each_statements_text_and_offset() {
    let sql = "  -- lead\n SELECT 'é;' ;\nDROP PEER p;  select  1 /* c */ ";
    let parsed = crate::parse_spanned(sql).unwrap();
    let texts: Vec<&str> = parsed.iter().map(|p| p.text).collect();
    assert_eq!(texts, ["SELECT 'é;'", "DROP PEER p", "select  1"]);
    for p in &parsed {
        let before: String = sql.chars().take(p.offset).collect();
        assert!(sql[before.len()..].starts_with(p.text), "{p:?}");
    }
}

#[test]
fn table_mapping_layout_keys() {
    use crate::MappingValue;
    let sql = "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING (\
               {from: public.events, to: events, order_by: [tenant, \"Id\"], \
                partition_by: 'toYYYYMM(created_at)', settings: 'index_granularity = 1024', \
                column_types: {amount: 'Float64', note: 'LowCardinality(String)'}}) \
               WITH (do_initial_copy = true)";
    let Statement::CreateMirror(m) = parse_one(sql) else {
        panic!("not a mirror")
    };
    let Mapping::Tables(t) = &m.mapping else {
        panic!("not a table mapping")
    };
    let keys: Vec<&str> = t[0].options.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        ["order_by", "partition_by", "settings", "column_types"]
    );
    assert_eq!(
        t[0].options[0].value,
        MappingValue::Columns(vec![Ident::new("tenant"), Ident::quoted("Id")])
    );
    assert_eq!(
        t[0].options[3].value,
        MappingValue::Types(vec![
            (Ident::new("amount"), "Float64".into()),
            (Ident::new("note"), "LowCardinality(String)".into()),
        ])
    );
    // Printed and parsed again, the same.
    let printed = Statement::CreateMirror(m.clone()).to_string();
    assert_eq!(parse_one(&printed), Statement::CreateMirror(m));
    for (bad, message) in [
        (
            "{from: a, to: b, order_by: 'x'}",
            "expected [ before the ORDER BY columns",
        ),
        (
            "{from: a, to: b, partition_by: [x]}",
            "expected a string after partition_by:",
        ),
        (
            "{from: a, to: b, settings: 'x = 1', settings: 'y = 2'}",
            "duplicate key \"settings\"",
        ),
        (
            "{from: a, to: b, column_types: {x: 'A', x: 'B'}}",
            "column \"x\" is given twice",
        ),
        (
            "{from: a, to: b, column_types: {x: Float64}}",
            "expected a string after the column name",
        ),
    ] {
        let e = super::parse_err(&format!(
            "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING ({bad})"
        ));
        assert!(e.message.contains(message), "{bad}: {e:?}");
    }
}
