//! Each column's exact type, as a PostgreSQL destination recreates it ([`PgType`]).
//!
//! The types a table's columns use are read from the catalog breadth first: the columns'
//! types, then what those are made of (an array's element, a domain's base, a composite's
//! fields, a range's subtype), until nothing new appears. Each type is then assembled as a
//! tree. A type's declaration text comes from `format_type`, except that names outside
//! `pg_catalog` are always schema-qualified (`format_type` qualifies only what the session's
//! `search_path` hides), so that the text means the same type on another server.

use std::collections::{HashMap, HashSet};

use ferry_core::ident::pg_qualified;
use ferry_core::peer::PostgresConfig;
use ferry_core::pgtype::{PgField, PgType, PgTypeDef, MAX_DEPTH};
use ferry_core::ErrorKind;
use tokio_postgres::Client;

use crate::connect::SourceError;

/// Where a type is used: a column, a field, a domain's base, an element, a subtype.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypeUse {
    pub oid: u32,
    /// The modifier (`atttypmod`); `-1` for none.
    pub typmod: i32,
    /// Declared array dimensions (`attndims`).
    pub dims: i32,
    /// A collation other than the type's default, qualified and quoted.
    pub collation: Option<String>,
}

use TypeUse as Use;

/// One type as the catalog describes it.
#[derive(Debug, Clone)]
struct Node {
    schema: String,
    name: String,
    typtype: char,
    binary: bool,
    is_array: bool,
    element: u32,
    base: u32,
    base_typmod: i32,
    base_dims: i32,
    not_null: bool,
    extension: Option<String>,
    labels: Vec<String>,
    checks: Vec<String>,
    subtype: Option<u32>,
    multirange: Option<String>,
    /// For a multirange type: its range type.
    range: Option<u32>,
    fields: Vec<(String, Use)>,
}

const COLUMNS: &str = "
SELECT a.attname::text, a.atttypid, a.atttypmod, a.attndims::int4,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
            THEN pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(c.collname) END
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation
LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = c.collnamespace
WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

const NODES: &str = "
SELECT t.oid, n.nspname::text, t.typname::text, t.typtype::text,
       (t.typsend <> 0 AND t.typreceive <> 0),
       EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.oid = t.typelem AND e.typarray = t.oid),
       t.typelem, t.typbasetype, t.typtypmod, t.typndims, t.typnotnull,
       (SELECT x.extname::text FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_extension x ON x.oid = d.refobjid
         WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = t.oid
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
         LIMIT 1),
       (SELECT array_agg(l.enumlabel::text ORDER BY l.enumsortorder)
          FROM pg_catalog.pg_enum l WHERE l.enumtypid = t.oid),
       (SELECT array_agg(pg_catalog.pg_get_constraintdef(c.oid) ORDER BY c.conname)
          FROM pg_catalog.pg_constraint c WHERE c.contypid = t.oid AND c.contype = 'c'),
       r.rngsubtype,
       (SELECT m.typname::text FROM pg_catalog.pg_type m WHERE m.oid = r.rngmultitypid),
       (SELECT mr.rngtypid FROM pg_catalog.pg_range mr WHERE mr.rngmultitypid = t.oid)
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid
WHERE t.oid = ANY($1::oid[])";

const FIELDS: &str = "
SELECT t.oid, a.attname::text, a.atttypid, a.atttypmod, a.attndims::int4,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> ft.typcollation
            THEN pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(c.collname) END
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_attribute a ON a.attrelid = t.typrelid
JOIN pg_catalog.pg_type ft ON ft.oid = a.atttypid
LEFT JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation
LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = c.collnamespace
WHERE t.oid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY t.oid, a.attnum";

const FORMATS: &str = "
SELECT u.o, u.m, pg_catalog.format_type(u.o, u.m), pg_catalog.format_type(u.o, NULL)
FROM unnest($1::oid[], $2::int4[]) AS u(o, m)";

/// Most distinct types one table may use.
const MAX_TYPES: usize = 10_000;

fn too_deep(what: &str) -> SourceError {
    SourceError {
        kind: ErrorKind::Unsupported,
        sqlstate: "0A000".into(),
        message: format!("type use {what} nests more than {MAX_DEPTH} levels deep"),
        hint: None,
        source: None,
    }
}

/// The exact type of every live column of table `oid`, by column name.
pub async fn exact_types(
    client: &Client,
    cfg: &PostgresConfig,
    table_oid: u32,
) -> Result<HashMap<String, PgType>, SourceError> {
    let pg = |e| SourceError::from_pg(cfg, e);
    let mut names = Vec::new();
    let mut uses = Vec::new();
    for r in client.query(COLUMNS, &[&table_oid]).await.map_err(pg)? {
        names.push(r.get::<_, String>(0));
        uses.push(Use {
            oid: r.get(1),
            typmod: r.get(2),
            dims: r.get(3),
            collation: r.get(4),
        });
    }
    let types = describe_types(client, cfg, &uses).await?;
    Ok(names.into_iter().zip(types).collect())
}

/// A statement's result columns as they are used: a column read straight from a table is
/// that column, with its own type (the server describes a domain column by its base type),
/// modifier, array dimensions and collation; a computed column is its described type and
/// modifier.
const RESULT_USES: &str = "
SELECT coalesce(a.atttypid, u.typ), coalesce(a.atttypmod, u.typmod),
       coalesce(a.attndims, 0)::int4,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
            THEN pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(c.collname) END
FROM unnest($1::oid[], $2::int4[], $3::oid[], $4::int2[])
         WITH ORDINALITY AS u(typ, typmod, relid, attnum, ord)
LEFT JOIN pg_catalog.pg_attribute a
    ON a.attrelid = u.relid AND a.attnum = u.attnum AND u.attnum > 0 AND NOT a.attisdropped
       AND (a.atttypid = u.typ OR EXISTS (SELECT 1 FROM pg_catalog.pg_type d
                                          WHERE d.oid = a.atttypid AND d.typtype = 'd'))
LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation
LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = c.collnamespace
ORDER BY u.ord";

/// The exact types of a statement's result columns, given as the server describes them: type,
/// modifier, and the table and column each is read from (0 when computed); see
/// [`RESULT_USES`].
pub async fn result_types(
    client: &Client,
    cfg: &PostgresConfig,
    types: &[u32],
    typmods: &[i32],
    tables: &[u32],
    attnums: &[i16],
) -> Result<Vec<PgType>, SourceError> {
    let rows = client
        .query(RESULT_USES, &[&types, &typmods, &tables, &attnums])
        .await
        .map_err(|e| SourceError::from_pg(cfg, e))?;
    let uses: Vec<Use> = rows
        .iter()
        .map(|r| Use {
            oid: r.get(0),
            typmod: r.get(1),
            dims: r.get(2),
            collation: r.get(3),
        })
        .collect();
    describe_types(client, cfg, &uses).await
}

/// The exact types of these uses, in their order.
pub async fn describe_types(
    client: &Client,
    cfg: &PostgresConfig,
    uses: &[TypeUse],
) -> Result<Vec<PgType>, SourceError> {
    let pg = |e| SourceError::from_pg(cfg, e);
    let columns: Vec<(String, Use)> = uses
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("#{i}"), u.clone()))
        .collect();

    // The types used, breadth first.
    let mut nodes: HashMap<u32, Node> = HashMap::new();
    let mut wanted: Vec<u32> = columns.iter().map(|(_, u)| u.oid).collect();
    while !wanted.is_empty() {
        wanted.sort_unstable();
        wanted.dedup();
        wanted.retain(|o| !nodes.contains_key(o));
        if wanted.is_empty() {
            break;
        }
        if nodes.len() + wanted.len() > MAX_TYPES {
            return Err(too_deep("?"));
        }
        let mut found = Vec::new();
        for r in client.query(NODES, &[&wanted]).await.map_err(pg)? {
            let oid: u32 = r.get(0);
            let first = |s: String| s.chars().next().unwrap_or('\0');
            let node = Node {
                schema: r.get(1),
                name: r.get(2),
                typtype: first(r.get(3)),
                binary: r.get(4),
                is_array: r.get(5),
                element: r.get(6),
                base: r.get(7),
                base_typmod: r.get(8),
                base_dims: r.get(9),
                not_null: r.get(10),
                extension: r.get(11),
                labels: r.get::<_, Option<Vec<String>>>(12).unwrap_or_default(),
                checks: r.get::<_, Option<Vec<String>>>(13).unwrap_or_default(),
                subtype: r.get(14),
                multirange: r.get(15),
                range: r.get(16),
                fields: Vec::new(),
            };
            found.push((oid, node));
        }
        let composites: Vec<u32> = found
            .iter()
            .filter(|(_, n)| n.typtype == 'c' && !n.is_array)
            .map(|(o, _)| *o)
            .collect();
        let mut next = Vec::new();
        for (oid, node) in found {
            if node.is_array {
                next.push(node.element);
            }
            if node.typtype == 'd' {
                next.push(node.base);
            }
            if let Some(s) = node.subtype {
                next.push(s);
            }
            if let Some(r) = node.range {
                next.push(r);
            }
            nodes.insert(oid, node);
        }
        if !composites.is_empty() {
            for r in client.query(FIELDS, &[&composites]).await.map_err(pg)? {
                let owner: u32 = r.get(0);
                let field = Use {
                    oid: r.get(2),
                    typmod: r.get(3),
                    dims: r.get(4),
                    collation: r.get(5),
                };
                next.push(field.oid);
                if let Some(n) = nodes.get_mut(&owner) {
                    n.fields.push((r.get(1), field));
                }
            }
        }
        for o in &wanted {
            if !nodes.contains_key(o) {
                return Err(SourceError {
                    kind: ErrorKind::Transient,
                    sqlstate: "42704".into(),
                    message: format!("type {o} vanished while it was described"),
                    hint: None,
                    source: None,
                });
            }
        }
        wanted = next;
    }

    // `format_type` of every non-array use, with and without its modifier.
    let mut uses: HashSet<(u32, i32)> = HashSet::new();
    let mut collect = |u: &Use, nodes: &HashMap<u32, Node>| {
        let mut cur = u.oid;
        let mut depth = 0;
        while let Some(n) = nodes.get(&cur) {
            if !n.is_array || depth > MAX_DEPTH {
                break;
            }
            cur = n.element;
            depth += 1;
        }
        uses.insert((cur, u.typmod));
    };
    for (_, u) in &columns {
        collect(u, &nodes);
    }
    for n in nodes.values() {
        if n.typtype == 'd' {
            collect(
                &Use {
                    oid: n.base,
                    typmod: n.base_typmod,
                    dims: n.base_dims,
                    collation: None,
                },
                &nodes,
            );
        }
        if let Some(s) = n.subtype {
            collect(
                &Use {
                    oid: s,
                    typmod: -1,
                    dims: 0,
                    collation: None,
                },
                &nodes,
            );
        }
        for (_, f) in &n.fields {
            collect(f, &nodes);
        }
    }
    let (oids, mods): (Vec<u32>, Vec<i32>) = uses.into_iter().unzip();
    let mut formats: HashMap<(u32, i32), (String, String)> = HashMap::new();
    for r in client.query(FORMATS, &[&oids, &mods]).await.map_err(pg)? {
        formats.insert((r.get(0), r.get(1)), (r.get(2), r.get(3)));
    }

    let builder = Builder {
        nodes: &nodes,
        formats: &formats,
    };
    let mut out = Vec::with_capacity(columns.len());
    for (name, u) in columns {
        out.push(builder.build(&u, 0).ok_or_else(|| too_deep(&name))?);
    }
    Ok(out)
}

struct Builder<'a> {
    nodes: &'a HashMap<u32, Node>,
    formats: &'a HashMap<(u32, i32), (String, String)>,
}

impl Builder<'_> {
    /// The declaration text of a non-array use.
    fn sql(&self, u: &Use, n: &Node) -> String {
        let (full, bare) = self
            .formats
            .get(&(u.oid, u.typmod))
            .cloned()
            .unwrap_or_default();
        if n.schema == "pg_catalog" && !full.is_empty() {
            return full;
        }
        // The modifier, as the type's own output function prints it.
        let suffix = if u.typmod >= 0 {
            full.strip_prefix(bare.as_str()).unwrap_or("").to_owned()
        } else {
            String::new()
        };
        format!("{}{suffix}", pg_qualified(&n.schema, &n.name))
    }

    fn build(&self, u: &Use, depth: usize) -> Option<PgType> {
        if depth > MAX_DEPTH {
            return None;
        }
        let n = self.nodes.get(&u.oid)?;
        let mut ty = PgType {
            oid: u.oid,
            schema: n.schema.clone(),
            name: n.name.clone(),
            sql: String::new(),
            collation: u.collation.clone(),
            binary: n.binary,
            def: PgTypeDef::Builtin,
        };
        if n.is_array {
            let element = self.build(
                &Use {
                    oid: n.element,
                    typmod: u.typmod,
                    dims: 0,
                    collation: None,
                },
                depth + 1,
            )?;
            let dims = u.dims.clamp(1, 6);
            ty.sql = format!("{}{}", element.sql, "[]".repeat(dims as usize));
            ty.def = PgTypeDef::Array {
                element: Box::new(element),
                dims: dims as u8,
            };
            return Some(ty);
        }
        ty.sql = self.sql(u, n);
        ty.def = if n.schema == "pg_catalog" || n.schema == "information_schema" {
            PgTypeDef::Builtin
        } else if let Some(extension) = &n.extension {
            PgTypeDef::Extension {
                extension: extension.clone(),
            }
        } else {
            match n.typtype {
                'e' => PgTypeDef::Enum {
                    labels: n.labels.clone(),
                },
                'd' => PgTypeDef::Domain {
                    base: Box::new(self.build(
                        &Use {
                            oid: n.base,
                            typmod: n.base_typmod,
                            dims: n.base_dims,
                            collation: None,
                        },
                        depth + 1,
                    )?),
                    not_null: n.not_null,
                    checks: n.checks.clone(),
                },
                'c' => {
                    let mut fields = Vec::with_capacity(n.fields.len());
                    for (name, f) in &n.fields {
                        fields.push(PgField {
                            name: name.clone(),
                            ty: self.build(f, depth + 1)?,
                        });
                    }
                    PgTypeDef::Composite { fields }
                }
                'r' => PgTypeDef::Range {
                    subtype: Box::new(self.build(
                        &Use {
                            oid: n.subtype?,
                            typmod: -1,
                            dims: 0,
                            collation: None,
                        },
                        depth + 1,
                    )?),
                    multirange: n.multirange.clone(),
                },
                'm' => PgTypeDef::Multirange {
                    range: Box::new(self.build(
                        &Use {
                            oid: n.range?,
                            typmod: -1,
                            dims: 0,
                            collation: None,
                        },
                        depth + 1,
                    )?),
                },
                _ => PgTypeDef::Base,
            }
        };
        Some(ty)
    }
}
