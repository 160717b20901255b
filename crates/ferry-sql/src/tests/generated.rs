//! Print → parse for statements built in code from awkward names and values.
//!
//! The hand-written inputs of `round_trip` start from SQL; these start from
//! values, so they also cover what the parser never produces by itself (every
//! kind of name in every position, quotes, keywords and comment markers
//! inside names and strings). A fixed-seed generator keeps runs reproducible.

use super::{parse, parse_one};
use crate::{
    AlterMirror, AlterMirrorAction, CreateMirror, CreatePeer, CreateQueryMirror, DropMirror,
    DropPeer, Ident, Mapping, MappingOption, MappingValue, MirrorName, OptionValue, PeerType,
    QualifiedName, ResyncMirror, SchemaMapping, SqlOption, Statement, TableMapping,
};

const NAMES: &[&str] = &[
    "orders",
    "Orders",
    "order",
    "user",
    "my table",
    "a\"b",
    "\"",
    "café",
    "ÉX",
    "_x$1",
    "1st",
    "if",
    "exists",
    "mapping",
    "semi;colon",
    "日本",
    "a.b",
    "a:b",
    "{x}",
    "[y]",
    "--dash",
    "/*c*/",
    "it's",
    "true",
    "from",
    "with",
    "peer",
    " lead",
    "trail ",
    "tab\there",
];

const OPTION_NAMES: &[&str] = &[
    "host",
    "port",
    "Mixed",
    "with space",
    "select",
    "a\"b",
    "x-y",
    "user",
    "true",
    "ü",
];

const STRINGS: &[&str] = &[
    "",
    "it's",
    "''",
    "\\",
    "\\'",
    "line\nbreak",
    "$$",
    "$x$",
    "--",
    "/* */",
    ";",
    "日本",
    "\"",
    "E'",
    "\r\n",
];

const NUMBERS: &[&str] = &[
    "0", "-1", "0.5", "-0.5", "1e6", "1.5e-3", "1_000", ".5", "5.", "5432",
];

const WORDS: &[&str] = &[
    "on",
    "true",
    "false",
    "Mixed",
    "with space",
    "a\"b",
    "null",
    "prefer",
    "select",
    "ü",
];

/// xorshift64: small, deterministic, good enough to pick from lists.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self) -> bool {
        self.next() % 2 == 0
    }

    fn ident(&mut self) -> Ident {
        let value = self.pick(NAMES);
        // Quoting a name that does not need it must survive too.
        if self.chance() {
            Ident::quoted(value)
        } else {
            Ident::new(value)
        }
    }

    fn table(&mut self) -> QualifiedName {
        QualifiedName {
            schema: self.chance().then(|| self.ident()),
            name: self.ident(),
        }
    }

    fn options(&mut self) -> Vec<SqlOption> {
        let mut options: Vec<SqlOption> = Vec::new();
        for _ in 0..self.below(5) {
            let name = self.pick(OPTION_NAMES).to_lowercase();
            if options.iter().any(|o| o.name == name) {
                continue;
            }
            let value = match self.below(4) {
                0 => OptionValue::String(self.pick(STRINGS).to_owned()),
                1 => OptionValue::Number(self.pick(NUMBERS).to_owned()),
                2 => OptionValue::Bool(self.chance()),
                _ => OptionValue::Ident(self.pick(WORDS).to_owned()),
            };
            options.push(SqlOption {
                name,
                value,
                position: 0,
            });
        }
        options
    }

    fn mapping_options(&mut self) -> Vec<MappingOption> {
        let mut options = Vec::new();
        if self.chance() {
            options.push(MappingOption {
                key: "order_by".into(),
                value: MappingValue::Columns(
                    (0..1 + self.below(3)).map(|_| self.ident()).collect(),
                ),
                position: 0,
            });
        }
        for key in ["partition_by", "settings"] {
            if self.chance() {
                options.push(MappingOption {
                    key: key.into(),
                    value: MappingValue::Text(self.pick(STRINGS).to_owned()),
                    position: 0,
                });
            }
        }
        if self.chance() {
            let column = self.ident();
            options.push(MappingOption {
                key: "column_types".into(),
                value: MappingValue::Types(vec![(column, self.pick(STRINGS).to_owned())]),
                position: 0,
            });
        }
        options
    }

    fn tables_mapping(&mut self) -> Mapping {
        let count = 1 + self.below(3);
        Mapping::Tables(
            (0..count)
                .map(|_| TableMapping {
                    source: self.table(),
                    destination: self.table(),
                    exclude: (0..self.below(3)).map(|_| self.ident()).collect(),
                    options: self.mapping_options(),
                    position: 0,
                })
                .collect(),
        )
    }

    fn mapping(&mut self) -> Mapping {
        if self.chance() {
            return self.tables_mapping();
        }
        let count = 1 + self.below(3);
        let schemas = (0..count)
            .map(|_| SchemaMapping {
                source: self.ident(),
                destination: self.ident(),
                position: 0,
            })
            .collect();
        Mapping::Schemas(schemas)
    }

    /// Query text with the characters dollar quoting must get around.
    fn query(&mut self) -> String {
        let parts = [
            "SELECT ",
            "$",
            "$$",
            "$q$",
            "'x'",
            " {{.start}}",
            "\n",
            "é",
            "--c\n",
        ];
        (0..self.below(6))
            .map(|_| self.pick(&parts))
            .collect::<String>()
    }

    fn statement(&mut self) -> Statement {
        match self.below(10) {
            0 => Statement::CreatePeer(CreatePeer {
                if_not_exists: self.chance(),
                name: self.ident(),
                peer_type: PeerType::ALL[self.below(PeerType::ALL.len())],
                options: self.options(),
            }),
            1 => Statement::DropPeer(DropPeer {
                if_exists: self.chance(),
                name: self.ident(),
            }),
            2 => Statement::CreateMirror(CreateMirror {
                if_not_exists: self.chance(),
                name: self.ident(),
                source: self.ident(),
                destination: self.ident(),
                mapping: self.mapping(),
                options: self.options(),
            }),
            3 => Statement::DropMirror(DropMirror {
                if_exists: self.chance(),
                name: self.ident(),
            }),
            4 => Statement::PauseMirror(MirrorName { name: self.ident() }),
            5 => Statement::ResumeMirror(MirrorName { name: self.ident() }),
            6 => Statement::AlterMirror(AlterMirror {
                name: self.ident(),
                action: match self.below(3) {
                    0 => AlterMirrorAction::AddTables(match self.tables_mapping() {
                        Mapping::Tables(t) => t,
                        Mapping::Schemas(_) => unreachable!(),
                    }),
                    1 => AlterMirrorAction::DropTables(
                        (0..1 + self.below(3)).map(|_| self.table()).collect(),
                    ),
                    _ => {
                        let mut o = self.options();
                        if o.is_empty() {
                            o.push(SqlOption {
                                name: "sync_interval".into(),
                                value: OptionValue::Number("5".into()),
                                position: 0,
                            });
                        }
                        AlterMirrorAction::Set(o)
                    }
                },
            }),
            7 => Statement::ExecuteMirror(MirrorName { name: self.ident() }),
            8 => Statement::CreateQueryMirror(CreateQueryMirror {
                if_not_exists: self.chance(),
                name: self.ident(),
                source: self.ident(),
                destination: self.ident(),
                query: self.query(),
                options: self.options(),
            }),
            _ => Statement::ResyncMirror(ResyncMirror {
                name: self.ident(),
                tables: (0..self.below(3)).map(|_| self.table()).collect(),
            }),
        }
    }
}

#[test]
fn generated_statements_read_back_equal() {
    let mut rng = Rng(0x5EED_F0E2_2024_0001);
    let mut batch = Vec::new();
    for _ in 0..2000 {
        let statement = rng.statement();
        let printed = statement.to_string();
        assert_eq!(parse_one(&printed), statement, "printed as {printed:?}");
        batch.push(statement);
    }
    // And all of them as one input, separated by semicolons.
    let joined = batch
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(";\n");
    assert_eq!(parse(&joined), Ok(batch));
}
