//! Creating what a mirror needs on the destination: user-defined types, tables, primary keys.
//!
//! Tables are created from the source's definition ([`ferry_core::pgtype`]): each copied
//! column with its exact type, collation and NOT NULL. A type the columns use that the
//! destination lacks is created first, in the schema it has at the source, after the types it
//! is made of: enums with their labels, composites with their fields, domains with their base
//! type, NOT NULL and CHECK constraints, ranges with their subtype (an array type comes with
//! its element, a multirange with its range). Types that exist are used as they are (the
//! check at `CREATE MIRROR` compared them, [`crate::check`]). Nothing else of the source table
//! is carried: no defaults, identity or generated expressions, no other constraints, indexes,
//! triggers, policies, or storage settings.

use ferry_core::destination::{TableSpec, TargetName};
use ferry_core::ident::{pg_ident, pg_literal, pg_qualified};
use ferry_core::pgtype::{PgType, PgTypeDef};
use ferry_core::{ColumnSchema, Error, ErrorKind};
use tokio_postgres::Client;

use crate::db::Db;

/// The exact type of a column, or why the description has none.
pub(crate) fn column_type<'a>(table: &TableSpec, c: &'a ColumnSchema) -> Result<&'a PgType, Error> {
    c.pg_type.as_ref().ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            "0A000",
            format!(
                "column \"{}\" of table {} was described without its exact type, which a PostgreSQL destination needs",
                c.name, table.source
            ),
        )
        .with_hint(format!("RESYNC MIRROR … TABLE {} describes it again.", table.source))
    })
}

/// A column's declaration: name, type, collation and, if asked, NOT NULL.
pub(crate) fn column_sql(name: &str, ty: &PgType, not_null: bool) -> String {
    let mut s = format!("{} {}", pg_ident(name), ty.sql);
    if let Some(c) = &ty.collation {
        s.push_str(" COLLATE ");
        s.push_str(c);
    }
    if not_null {
        s.push_str(" NOT NULL");
    }
    s
}

/// The OID of the type `schema.name`, if the destination has it.
pub(crate) async fn type_oid(
    db: &Db,
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Option<u32>, Error> {
    let row = client
        .query_opt(
            "SELECT t.oid FROM pg_catalog.pg_type t
             JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname = $1 AND t.typname = $2",
            &[&schema, &name],
        )
        .await
        .map_err(db.err())?;
    Ok(row.map(|r| r.get(0)))
}

/// The statement that creates a user-defined type; `None` for the types that come with
/// PostgreSQL, an extension, or another type.
pub(crate) fn create_type_sql(ty: &PgType) -> Option<String> {
    let name = ty.qualified_name();
    Some(match &ty.def {
        PgTypeDef::Enum { labels } => {
            let labels: Vec<String> = labels.iter().map(|l| pg_literal(l)).collect();
            format!("CREATE TYPE {name} AS ENUM ({})", labels.join(", "))
        }
        PgTypeDef::Composite { fields } => {
            let fields: Vec<String> = fields
                .iter()
                .map(|f| column_sql(&f.name, &f.ty, false))
                .collect();
            format!("CREATE TYPE {name} AS ({})", fields.join(", "))
        }
        PgTypeDef::Domain {
            base,
            not_null,
            checks,
        } => {
            let mut s = format!("CREATE DOMAIN {name} AS {}", base.sql);
            if let Some(c) = &ty.collation {
                s.push_str(" COLLATE ");
                s.push_str(c);
            }
            if *not_null {
                s.push_str(" NOT NULL");
            }
            // `pg_get_constraintdef` text, as the source's server printed it: a constraint
            // the source enforces is enforced here too. One not validated at the source is
            // created validated (CREATE DOMAIN has no NOT VALID); the load then checks it.
            for c in checks {
                s.push(' ');
                s.push_str(c.strip_suffix(" NOT VALID").unwrap_or(c));
            }
            s
        }
        PgTypeDef::Range {
            subtype,
            multirange,
        } => {
            let mut s = format!("CREATE TYPE {name} AS RANGE (SUBTYPE = {}", subtype.sql);
            if let Some(m) = multirange {
                s.push_str(", MULTIRANGE_TYPE_NAME = ");
                s.push_str(&pg_qualified(&ty.schema, m));
            }
            s.push(')');
            s
        }
        PgTypeDef::Builtin
        | PgTypeDef::Extension { .. }
        | PgTypeDef::Base
        | PgTypeDef::Array { .. }
        | PgTypeDef::Multirange { .. } => return None,
    })
}

/// Creates the user-defined types `ty` uses, itself included, where the destination lacks
/// them, each after the types it is made of.
pub(crate) async fn create_types(db: &Db, client: &Client, ty: &PgType) -> Result<(), Error> {
    for t in ty.dependencies() {
        let Some(sql) = create_type_sql(t) else {
            continue;
        };
        if type_oid(db, client, &t.schema, &t.name).await?.is_some() {
            continue;
        }
        if let Err(e) = client.batch_execute(&sql).await {
            // Created meanwhile by another mirror's setup: use it.
            if e.code().map(|c| c.code()) == Some("42710")
                && type_oid(db, client, &t.schema, &t.name).await?.is_some()
            {
                continue;
            }
            return Err(db.err()(e).context(format!("creating type {}", t.qualified_name())));
        }
        tracing::info!(r#type = %t.qualified_name(), "type created on the destination");
    }
    Ok(())
}

/// `CREATE TABLE` for `into` with the table's columns, and its primary key if `with_key`.
pub(crate) fn create_table_sql(
    table: &TableSpec,
    into: &TargetName,
    with_key: bool,
) -> Result<String, Error> {
    let mut parts = Vec::with_capacity(table.columns.len() + 1);
    for c in &table.columns {
        parts.push(column_sql(&c.name, column_type(table, c)?, !c.nullable));
    }
    let keys = key_names(table);
    if with_key && !keys.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", quoted_list(&keys)));
    }
    Ok(format!(
        "CREATE TABLE {} ({})",
        pg_qualified(&into.namespace, &into.table),
        parts.join(", ")
    ))
}

/// The key columns' names, in key order.
pub(crate) fn key_names(table: &TableSpec) -> Vec<String> {
    table
        .key_columns()
        .into_iter()
        .map(|i| table.columns[i].name.clone())
        .collect()
}

/// Names quoted and separated by commas.
pub(crate) fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| pg_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether table `oid` has a valid unique index on exactly the columns `keys` (in any order).
pub(crate) async fn has_key_index(
    db: &Db,
    client: &Client,
    oid: u32,
    keys: &[String],
) -> Result<bool, Error> {
    let mut sorted = keys.to_vec();
    sorted.sort();
    let row = client
        .query_one(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_catalog.pg_index i
                 WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indisready
                   AND i.indpred IS NULL AND i.indexprs IS NULL
                   AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text COLLATE \"C\")
                          FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) AS k(n)
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n)
                       = $2::text[])",
            &[&oid, &sorted],
        )
        .await
        .map_err(db.err())?;
    Ok(row.get(0))
}

/// The statement that gives a table its primary key.
pub(crate) fn add_key_sql(target: &TargetName, keys: &[String]) -> String {
    format!(
        "ALTER TABLE {} ADD PRIMARY KEY ({})",
        pg_qualified(&target.namespace, &target.table),
        quoted_list(keys)
    )
}

/// Leaves one row of each key, for a table loaded without its key whose ranges were read in
/// different snapshots (a row moved between ranges is read twice; the stream that follows
/// makes the survivor current). Returns the rows removed.
pub(crate) async fn remove_duplicate_keys(
    db: &Db,
    client: &Client,
    target: &TargetName,
    keys: &[String],
) -> Result<u64, Error> {
    let on: Vec<String> = keys
        .iter()
        .map(|k| format!("a.{q} = b.{q}", q = pg_ident(k)))
        .collect();
    let t = pg_qualified(&target.namespace, &target.table);
    client
        .execute(
            &format!(
                "DELETE FROM {t} a USING {t} b WHERE {} AND a.ctid < b.ctid",
                on.join(" AND ")
            ),
            &[],
        )
        .await
        .map_err(db.err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::pgtype::PgField;

    fn t(schema: &str, name: &str, sql: &str, def: PgTypeDef) -> PgType {
        PgType {
            oid: 1,
            schema: schema.into(),
            name: name.into(),
            sql: sql.into(),
            collation: None,
            binary: true,
            def,
        }
    }

    #[test]
    fn user_types_are_declared_from_their_definition() {
        let text = t("pg_catalog", "text", "text", PgTypeDef::Builtin);
        let e = t(
            "app",
            "mood",
            "\"app\".\"mood\"",
            PgTypeDef::Enum {
                labels: vec!["it's".into(), "ok".into()],
            },
        );
        assert_eq!(
            create_type_sql(&e).unwrap(),
            "CREATE TYPE \"app\".\"mood\" AS ENUM ('it''s', 'ok')"
        );
        let mut c_text = text.clone();
        c_text.collation = Some("\"pg_catalog\".\"C\"".into());
        let pair = t(
            "public",
            "pair",
            "\"public\".\"pair\"",
            PgTypeDef::Composite {
                fields: vec![
                    PgField {
                        name: "a b".into(),
                        ty: c_text,
                    },
                    PgField {
                        name: "m".into(),
                        ty: e,
                    },
                ],
            },
        );
        assert_eq!(
            create_type_sql(&pair).unwrap(),
            "CREATE TYPE \"public\".\"pair\" AS (\"a b\" text COLLATE \"pg_catalog\".\"C\", \"m\" \"app\".\"mood\")"
        );
        let dom = t(
            "public",
            "posint",
            "\"public\".\"posint\"",
            PgTypeDef::Domain {
                base: Box::new(t("pg_catalog", "int4", "integer", PgTypeDef::Builtin)),
                not_null: true,
                checks: vec!["CHECK ((VALUE > 0)) NOT VALID".into()],
            },
        );
        assert_eq!(
            create_type_sql(&dom).unwrap(),
            "CREATE DOMAIN \"public\".\"posint\" AS integer NOT NULL CHECK ((VALUE > 0))"
        );
        assert_eq!(create_type_sql(&text), None);
    }
}
