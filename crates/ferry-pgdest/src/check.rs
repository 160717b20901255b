//! What `CREATE MIRROR` checks on a PostgreSQL destination before anything is created.
//!
//! - The role's privileges: TEMPORARY on the database (changes are staged in temporary
//!   tables), CREATE on it while schema `_ferry` does not exist, USAGE and CREATE on each
//!   destination schema and on the schema of each type to create, and for a table that exists
//!   its ownership (keys and columns are added to it). All that is missing is reported at once,
//!   with the GRANTs that give it.
//! - Every type the columns use: it exists on the destination with the same definition, or it
//!   can be created there. A type without binary send and receive functions is refused (the
//!   load and the stream carry binary values), as are an extension's types where the extension
//!   is not installed, and base types defined outside any extension.
//! - A table that exists already is used if it is compatible: every copied column is there with
//!   the same type and collation, a column the source allows NULL in allows NULL, the columns
//!   it has beyond the source's take NULL or a default, its primary key (if any) is the
//!   source's key, and, when the mirror loads it, it is empty.

use std::collections::BTreeSet;

use ferry_core::destination::{TableSpec, TargetName};
use ferry_core::ident::{pg_ident, pg_literal};
use ferry_core::pgtype::{PgType, PgTypeDef};
use ferry_core::{Error, ErrorKind};
use ferry_postgres::types::{describe_types, exact_types, TypeUse};
use tokio_postgres::Client;

use crate::db::{table_oid, Db};
use crate::ddl::{column_type, create_type_sql, type_oid};

/// Checks that every table can be created (or used) and filled; creates nothing.
pub(crate) async fn check(
    db: &Db,
    client: &Client,
    tables: &[TableSpec],
    loads: bool,
) -> Result<(), Error> {
    let mut checker = Checker::start(db, client).await?;
    for t in tables {
        checker.columns(db, client, t).await?;
        if let Some(oid) = table_oid(db, client, &t.target).await? {
            if let Some(why) = check_existing(db, client, t, oid).await? {
                return Err(incompatible(t, why));
            }
            if checker.table_access(db, client, oid, &t.target).await? && loads {
                check_empty(db, client, &t.target).await?;
            }
        }
    }
    checker.finish()
}

/// The checks of one destination: the privileges missing so far (all reported at once, by
/// [`Checker::finish`]), and the types and schemas already checked.
pub(crate) struct Checker {
    role: String,
    database: String,
    missing: BTreeSet<String>,
    checked_types: BTreeSet<(String, String)>,
    checked_schemas: BTreeSet<String>,
}

impl Checker {
    /// Notes the privileges on the database and on Ferry's own schema the role lacks.
    pub(crate) async fn start(db: &Db, client: &Client) -> Result<Checker, Error> {
        let mut missing: BTreeSet<String> = BTreeSet::new();
        let row = client
            .query_one(
                "SELECT current_user::text, current_database()::text,
                        has_database_privilege(current_database(), 'TEMPORARY'),
                        has_database_privilege(current_database(), 'CREATE'),
                        (SELECT has_schema_privilege(n.oid, 'USAGE') AND has_schema_privilege(n.oid, 'CREATE')
                           FROM pg_catalog.pg_namespace n WHERE n.nspname = '_ferry'),
                        (SELECT count(*) FROM pg_catalog.pg_class c
                           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = '_ferry'
                            AND c.relname IN ('positions', 'loaded_ranges', 'loaded_partitions')
                            AND NOT has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE'))",
                &[],
            )
            .await
            .map_err(db.err())?;
        let role: String = row.get(0);
        let database: String = row.get(1);
        let (temp, create_db): (bool, bool) = (row.get(2), row.get(3));
        let ferry_schema: Option<bool> = row.get(4);
        let ferry_tables_denied: i64 = row.get(5);
        let q_db = pg_ident(&database);
        if !temp {
            missing.insert(format!(
                "GRANT TEMPORARY ON DATABASE {q_db} TO {}",
                pg_ident(&role)
            ));
        }
        match ferry_schema {
            None if !create_db => {
                missing.insert(format!(
                    "GRANT CREATE ON DATABASE {q_db} TO {}",
                    pg_ident(&role)
                ));
            }
            Some(false) => {
                missing.insert(format!(
                    "GRANT USAGE, CREATE ON SCHEMA _ferry TO {}",
                    pg_ident(&role)
                ));
            }
            _ => {}
        }
        if ferry_tables_denied > 0 {
            missing.insert(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA _ferry TO {}",
                pg_ident(&role)
            ));
        }
        Ok(Checker {
            role,
            database,
            missing,
            checked_types: BTreeSet::new(),
            checked_schemas: BTreeSet::new(),
        })
    }

    /// The table's schema is usable, and every type its columns use is there or can be made.
    pub(crate) async fn columns(
        &mut self,
        db: &Db,
        client: &Client,
        t: &TableSpec,
    ) -> Result<(), Error> {
        schema_usable(
            db,
            client,
            &t.target.namespace,
            &self.role,
            &mut self.missing,
        )
        .await?;
        self.checked_schemas.insert(t.target.namespace.clone());
        for c in &t.columns {
            let ty = column_type(t, c)?;
            check_collations(db, client, ty, &c.name, t).await?;
            for dep in ty.dependencies() {
                if !self
                    .checked_types
                    .insert((dep.schema.clone(), dep.name.clone()))
                {
                    continue;
                }
                check_type(
                    db,
                    client,
                    dep,
                    &self.role,
                    &mut self.checked_schemas,
                    &mut self.missing,
                )
                .await
                .map_err(|e| e.context(format!("column \"{}\" of table {}", c.name, t.source)))?;
            }
        }
        Ok(())
    }

    /// Notes what the role lacks to write (and alter) table `oid`; `true` when it lacks
    /// nothing.
    pub(crate) async fn table_access(
        &mut self,
        db: &Db,
        client: &Client,
        oid: u32,
        name: &TargetName,
    ) -> Result<bool, Error> {
        let row = client
            .query_one(
                "SELECT pg_has_role(c.relowner, 'USAGE'),
                        has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
                 FROM pg_catalog.pg_class c WHERE c.oid = $1",
                &[&oid],
            )
            .await
            .map_err(db.err())?;
        let table_sql = ferry_core::ident::pg_qualified(&name.namespace, &name.table);
        if !row.get::<_, bool>(0) {
            self.missing.insert(format!(
                "ALTER TABLE {table_sql} OWNER TO {}",
                pg_ident(&self.role)
            ));
            return Ok(false);
        }
        if !row.get::<_, bool>(1) {
            self.missing.insert(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {table_sql} TO {}",
                pg_ident(&self.role)
            ));
            return Ok(false);
        }
        Ok(true)
    }

    /// Every privilege missing, reported at once with the GRANTs that give them.
    pub(crate) fn finish(self) -> Result<(), Error> {
        if self.missing.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = self.missing.into_iter().collect();
        Err(Error::new(
            ErrorKind::Permission,
            "42501",
            format!(
                "role \"{}\" lacks privileges Ferry needs on the destination database \"{}\"",
                self.role, self.database
            ),
        )
        .with_hint(format!(
            "As an owner or superuser there, run: {}.",
            list.join("; ")
        )))
    }
}

/// The schema exists; notes the privileges the role lacks on it.
async fn schema_usable(
    db: &Db,
    client: &Client,
    schema: &str,
    role: &str,
    missing: &mut BTreeSet<String>,
) -> Result<(), Error> {
    let row = client
        .query_opt(
            "SELECT has_schema_privilege(oid, 'USAGE'), has_schema_privilege(oid, 'CREATE')
             FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .map_err(db.err())?;
    let Some(row) = row else {
        return Err(Error::new(
            ErrorKind::NotFound,
            "3F000",
            format!("schema \"{schema}\" does not exist on the destination"),
        )
        .with_hint(format!(
            "Create it first (CREATE SCHEMA {}), or map the table to an existing schema.",
            pg_ident(schema)
        )));
    };
    if !(row.get::<_, bool>(0) && row.get::<_, bool>(1)) {
        missing.insert(format!(
            "GRANT USAGE, CREATE ON SCHEMA {} TO {}",
            pg_ident(schema),
            pg_ident(role)
        ));
    }
    Ok(())
}

/// Every collation a column's type names exists on the destination.
async fn check_collations(
    db: &Db,
    client: &Client,
    ty: &PgType,
    column: &str,
    t: &TableSpec,
) -> Result<(), Error> {
    let mut names = Vec::new();
    fn walk<'a>(ty: &'a PgType, out: &mut Vec<&'a str>, depth: usize) {
        if depth > ferry_core::pgtype::MAX_DEPTH {
            return;
        }
        if let Some(c) = &ty.collation {
            out.push(c);
        }
        for c in ty.children() {
            walk(c, out, depth + 1);
        }
    }
    walk(ty, &mut names, 0);
    for n in names {
        let found: bool = client
            .query_one("SELECT pg_catalog.to_regcollation($1) IS NOT NULL", &[&n])
            .await
            .map_err(db.err())?
            .get(0);
        if !found {
            return Err(Error::new(
                ErrorKind::NotFound,
                "42704",
                format!(
                    "collation {n} of column \"{column}\" of table {} does not exist on the destination",
                    t.source
                ),
            )
            .with_hint("Create the collation on the destination (CREATE COLLATION), then try again."));
        }
    }
    Ok(())
}

/// One type a column uses: present and alike, or creatable.
async fn check_type(
    db: &Db,
    client: &Client,
    ty: &PgType,
    role: &str,
    checked_schemas: &mut BTreeSet<String>,
    missing: &mut BTreeSet<String>,
) -> Result<(), Error> {
    let name = ty.qualified_name();
    if !ty.binary {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "0A000",
            format!("type {name} has no binary send and receive functions, which Ferry needs to carry it to PostgreSQL"),
        )
        .with_hint("Leave the column out with exclude: [...] in the table mapping."));
    }
    if matches!(
        ty.def,
        PgTypeDef::Array { .. } | PgTypeDef::Multirange { .. }
    ) {
        // Made with its element or range.
        return Ok(());
    }
    if let Some(oid) = type_oid(db, client, &ty.schema, &ty.name).await? {
        if ty.is_user_defined() {
            let dest = describe_types(
                client,
                &db.cfg,
                &[TypeUse {
                    oid,
                    typmod: -1,
                    dims: 0,
                    collation: None,
                }],
            )
            .await?;
            if let Some(why) = dest.first().and_then(|d| differences(ty, d)) {
                return Err(Error::new(
                    ErrorKind::Misconfigured,
                    "42804",
                    format!("type {name} exists on the destination but differs from the source's: {why}"),
                )
                .with_hint("Make the destination's type match the source's, or drop it there so that Ferry creates it."));
            }
        }
        return Ok(());
    }
    match &ty.def {
        PgTypeDef::Builtin => Err(Error::new(
            ErrorKind::Unsupported,
            "42704",
            format!("type {name} does not exist on the destination"),
        )
        .with_hint("It is built into the source's PostgreSQL: the destination may run an older version.")),
        PgTypeDef::Extension { extension } => {
            let installed: Option<String> = client
                .query_opt(
                    "SELECT n.nspname::text FROM pg_catalog.pg_extension x
                     JOIN pg_catalog.pg_namespace n ON n.oid = x.extnamespace WHERE x.extname = $1",
                    &[extension],
                )
                .await
                .map_err(db.err())?
                .map(|r| r.get(0));
            Err(match installed {
                None => Error::new(
                    ErrorKind::Misconfigured,
                    "42704",
                    format!("type {name} comes from extension \"{extension}\", which is not installed on the destination"),
                )
                .with_hint(format!(
                    "Install it there first: CREATE EXTENSION {} SCHEMA {}.",
                    pg_ident(extension),
                    pg_ident(&ty.schema)
                )),
                Some(schema) => Error::new(
                    ErrorKind::Misconfigured,
                    "42704",
                    format!("type {name} does not exist on the destination: extension \"{extension}\" is installed there in schema \"{schema}\""),
                )
                .with_hint(format!(
                    "Install the extension in schema \"{}\" on the destination, as at the source (ALTER EXTENSION {} SET SCHEMA {}).",
                    ty.schema,
                    pg_ident(extension),
                    pg_ident(&ty.schema)
                )),
            })
        }
        PgTypeDef::Base => Err(Error::new(
            ErrorKind::Unsupported,
            "42704",
            format!("type {name} does not exist on the destination, and Ferry cannot create a base type"),
        )
        .with_hint("Create the type on the destination as it was created at the source, then try again.")),
        _ => {
            debug_assert!(create_type_sql(ty).is_some());
            if checked_schemas.insert(ty.schema.clone()) {
                schema_usable(db, client, &ty.schema, role, missing).await?;
            }
            Ok(())
        }
    }
}

/// How a type on the destination differs from the source's, if it does.
fn differences(src: &PgType, dst: &PgType) -> Option<String> {
    fn kind(d: &PgTypeDef) -> &'static str {
        match d {
            PgTypeDef::Builtin | PgTypeDef::Extension { .. } | PgTypeDef::Base => "base type",
            PgTypeDef::Array { .. } => "array type",
            PgTypeDef::Enum { .. } => "enum",
            PgTypeDef::Domain { .. } => "domain",
            PgTypeDef::Composite { .. } => "composite type",
            PgTypeDef::Range { .. } => "range type",
            PgTypeDef::Multirange { .. } => "multirange type",
        }
    }
    let same_use = |a: &PgType, b: &PgType| a.sql == b.sql && a.collation == b.collation;
    match (&src.def, &dst.def) {
        (PgTypeDef::Enum { labels: a }, PgTypeDef::Enum { labels: b }) => {
            let lacking: Vec<String> = a
                .iter()
                .filter(|l| !b.contains(l))
                .map(|l| pg_literal(l))
                .collect();
            (!lacking.is_empty()).then(|| format!("it lacks the labels {}", lacking.join(", ")))
        }
        (PgTypeDef::Composite { fields: a }, PgTypeDef::Composite { fields: b }) => {
            if a.len() != b.len() {
                return Some(format!(
                    "it has {} fields, the source's has {}",
                    b.len(),
                    a.len()
                ));
            }
            a.iter().zip(b).find_map(|(x, y)| {
                if x.name != y.name {
                    Some(format!(
                        "its field \"{}\" is \"{}\" at the source",
                        y.name, x.name
                    ))
                } else if !same_use(&x.ty, &y.ty) {
                    Some(format!(
                        "its field \"{}\" is of type {}, at the source {}",
                        x.name, y.ty.sql, x.ty.sql
                    ))
                } else {
                    None
                }
            })
        }
        (PgTypeDef::Domain { base: a, .. }, PgTypeDef::Domain { base: b, .. }) => (!same_use(a, b))
            .then(|| {
                format!(
                    "it is a domain over {}, at the source over {}",
                    b.sql, a.sql
                )
            }),
        (PgTypeDef::Range { subtype: a, .. }, PgTypeDef::Range { subtype: b, .. }) => {
            (!same_use(a, b))
                .then(|| format!("it is a range of {}, at the source of {}", b.sql, a.sql))
        }
        (a, b) if kind(a) != kind(b) => Some(format!(
            "it is a {} there, a {} at the source",
            kind(b),
            kind(a)
        )),
        _ => None,
    }
}

/// How a table that exists differs from the columns it must take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// It lacks the column.
    Missing(String),
    /// The column's type (with its collation) is `have`, and must be `want`.
    Type {
        column: String,
        have: String,
        want: String,
    },
    /// The column is generated.
    Generated(String),
    /// The column is NOT NULL, and its values may be NULL.
    NotNull(String),
    /// A column of its own is NOT NULL without a default.
    ExtraNotNull(String),
}

fn type_text(ty: &PgType) -> String {
    match &ty.collation {
        Some(c) => format!("{} COLLATE {c}", ty.sql),
        None => ty.sql.clone(),
    }
}

/// How table `oid` fails to take `t`'s columns, if it does (the first difference found). With
/// `nulls`, a NOT NULL column where `t`'s may hold NULL is one.
pub(crate) async fn compare_columns(
    db: &Db,
    client: &Client,
    t: &TableSpec,
    oid: u32,
    nulls: bool,
) -> Result<Option<Mismatch>, Error> {
    let types = exact_types(client, &db.cfg, oid).await?;
    let rows = client
        .query(
            "SELECT a.attname::text, a.attnotnull,
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', a.attgenerated <> ''
             FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&oid],
        )
        .await
        .map_err(db.err())?;
    for c in &t.columns {
        let want = column_type(t, c)?;
        let Some(r) = rows.iter().find(|r| r.get::<_, String>(0) == c.name) else {
            return Ok(Some(Mismatch::Missing(c.name.clone())));
        };
        let have = types
            .get(&c.name)
            .ok_or_else(|| Error::internal("a column without a type"))?;
        if want.sql != have.sql || want.collation != have.collation {
            return Ok(Some(Mismatch::Type {
                column: c.name.clone(),
                have: type_text(have),
                want: type_text(want),
            }));
        }
        if r.get::<_, bool>(3) {
            return Ok(Some(Mismatch::Generated(c.name.clone())));
        }
        if nulls && c.nullable && r.get::<_, bool>(1) {
            return Ok(Some(Mismatch::NotNull(c.name.clone())));
        }
    }
    for r in &rows {
        let name: String = r.get(0);
        let (not_null, has_default): (bool, bool) = (r.get(1), r.get(2));
        if not_null && !has_default && !t.columns.iter().any(|c| c.name == name) {
            return Ok(Some(Mismatch::ExtraNotNull(name)));
        }
    }
    Ok(None)
}

fn incompatible(t: &TableSpec, why: String) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        "42P07",
        format!(
            "destination table {} exists and cannot take table {}: {why}",
            t.target, t.source
        ),
    )
    .with_hint(
        "Drop it or make it match the source's definition, or map the table to another name.",
    )
}

/// A destination table that exists already: usable as it is, or why not.
async fn check_existing(
    db: &Db,
    client: &Client,
    t: &TableSpec,
    oid: u32,
) -> Result<Option<String>, Error> {
    if let Some(m) = compare_columns(db, client, t, oid, true).await? {
        return Ok(Some(match m {
            Mismatch::Missing(c) => format!("it has no column \"{c}\""),
            Mismatch::Type { column, have, want } => {
                format!("its column \"{column}\" is of type {have}, at the source {want}")
            }
            Mismatch::Generated(c) => format!("its column \"{c}\" is generated"),
            Mismatch::NotNull(c) => {
                format!("its column \"{c}\" is NOT NULL, and the source allows NULL there")
            }
            Mismatch::ExtraNotNull(c) => format!(
                "its column \"{c}\" is NOT NULL without a default, and the source has no such column"
            ),
        }));
    }
    let key: Option<Vec<String>> = client
        .query_one(
            "SELECT array_agg(a.attname::text ORDER BY a.attname::text COLLATE \"C\")
             FROM pg_catalog.pg_index i
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
             WHERE i.indrelid = $1 AND i.indisprimary",
            &[&oid],
        )
        .await
        .map_err(db.err())?
        .get(0);
    if let Some(key) = key {
        let mut want = crate::ddl::key_names(t);
        want.sort();
        if want.is_empty() {
            return Ok(Some(
                "it has a primary key, and the source table has none (its identical rows could not be stored)".into(),
            ));
        }
        if key != want {
            return Ok(Some(format!(
                "its primary key is ({}), the source's ({})",
                key.join(", "),
                want.join(", ")
            )));
        }
    }
    Ok(None)
}

/// A table the mirror loads must be empty.
async fn check_empty(db: &Db, client: &Client, name: &TargetName) -> Result<(), Error> {
    let table_sql = ferry_core::ident::pg_qualified(&name.namespace, &name.table);
    let empty: bool = client
        .query_one(
            &format!("SELECT NOT EXISTS (SELECT 1 FROM {table_sql})"),
            &[],
        )
        .await
        .map_err(db.err())?
        .get(0);
    if !empty {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "55000",
            format!("destination table {name} already holds rows, and the mirror's initial load would add the source's to them"),
        )
        .with_hint(format!(
            "Empty it (TRUNCATE {table_sql}), map the table to another name, or create the mirror with do_initial_copy = false if it already holds the source's rows."
        )));
    }
    Ok(())
}
