//! The exact PostgreSQL type of a source column, for a destination that recreates it.
//!
//! A PostgreSQL destination creates its columns with the source's own types, and the
//! user-defined types they use (enums, domains, composites, ranges, arrays of them) where they
//! are missing, and checks an existing table against them. The source describes each copied
//! column's type this way when it describes a table ([`crate::ColumnSchema::pg_type`]); the
//! engine stores and carries the description with the column and never looks inside it; other
//! destinations ignore it.

use serde::{Deserialize, Serialize};

/// A type as a column, a composite's field, a domain's base, an array's element or a range's
/// subtype uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgType {
    /// The type's OID on the source. Built-in types (below 10000) have the same OID on every
    /// server; user and extension types have other OIDs elsewhere.
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// The type as a declaration names it, with its modifier and array brackets, every name
    /// outside `pg_catalog` schema-qualified and quoted: `numeric(10,2)`,
    /// `character varying(20)[]`, `"public"."mood"`, `"public"."vector"(3)`.
    pub sql: String,
    /// A collation other than the type's default, qualified and quoted (`"pg_catalog"."C"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation: Option<String>,
    /// Whether the type has binary send and receive functions (binary COPY needs both).
    pub binary: bool,
    pub def: PgTypeDef,
}

/// What kind of type it is, with what a destination needs to create it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgTypeDef {
    /// A type of `pg_catalog` or `information_schema`: on every server.
    Builtin,
    /// A base type an extension defines: on a server where the extension is installed.
    Extension {
        extension: String,
    },
    /// A base type defined outside any extension (with C functions): it can be used only
    /// where it exists already.
    Base,
    /// An array; `dims` is the declared number of dimensions (at least 1).
    Array {
        element: Box<PgType>,
        dims: u8,
    },
    Enum {
        labels: Vec<String>,
    },
    /// A domain: its base type (with the domain's modifier) and constraints (`CHECK (…)` as
    /// `pg_get_constraintdef` prints them).
    Domain {
        base: Box<PgType>,
        not_null: bool,
        checks: Vec<String>,
    },
    /// A composite type's live fields, in order.
    Composite {
        fields: Vec<PgField>,
    },
    /// A range type; `multirange` is the name of its multirange type.
    Range {
        subtype: Box<PgType>,
        multirange: Option<String>,
    },
    /// The multirange type of a range type (created with it).
    Multirange {
        range: Box<PgType>,
    },
}

/// A field of a composite type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgField {
    pub name: String,
    pub ty: PgType,
}

impl PgType {
    /// Whether the type is defined by the user (created on a destination where it is missing).
    pub fn is_user_defined(&self) -> bool {
        matches!(
            self.def,
            PgTypeDef::Enum { .. }
                | PgTypeDef::Domain { .. }
                | PgTypeDef::Composite { .. }
                | PgTypeDef::Range { .. }
        )
    }

    /// The types this one is made of, directly.
    pub fn children(&self) -> Vec<&PgType> {
        match &self.def {
            PgTypeDef::Array { element, .. } => vec![element],
            PgTypeDef::Domain { base, .. } => vec![base],
            PgTypeDef::Composite { fields } => fields.iter().map(|f| &f.ty).collect(),
            PgTypeDef::Range { subtype, .. } => vec![subtype],
            PgTypeDef::Multirange { range } => vec![range],
            PgTypeDef::Builtin
            | PgTypeDef::Extension { .. }
            | PgTypeDef::Base
            | PgTypeDef::Enum { .. } => Vec::new(),
        }
    }

    /// Every type this one uses, itself last, each after the types it is made of (the order to
    /// create them in); a type used twice is listed once.
    pub fn dependencies(&self) -> Vec<&PgType> {
        let mut out: Vec<&PgType> = Vec::new();
        fn walk<'a>(t: &'a PgType, out: &mut Vec<&'a PgType>, depth: usize) {
            if depth > MAX_DEPTH {
                return;
            }
            for c in t.children() {
                walk(c, out, depth + 1);
            }
            if !out.iter().any(|o| o.schema == t.schema && o.name == t.name) {
                out.push(t);
            }
        }
        walk(self, &mut out, 0);
        out
    }

    /// The qualified, quoted name of the type itself (no modifier, no brackets).
    pub fn qualified_name(&self) -> String {
        crate::ident::pg_qualified(&self.schema, &self.name)
    }
}

/// How deep types nest at most (an array of a composite with a domain field …): deeper
/// descriptions are cut there, and a destination refuses them.
pub const MAX_DEPTH: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(name: &str, oid: u32) -> PgType {
        PgType {
            oid,
            schema: "pg_catalog".into(),
            name: name.into(),
            sql: name.into(),
            collation: None,
            binary: true,
            def: PgTypeDef::Builtin,
        }
    }

    #[test]
    fn dependencies_come_before_their_users_once() {
        let mood = PgType {
            oid: 16400,
            schema: "public".into(),
            name: "mood".into(),
            sql: "\"public\".\"mood\"".into(),
            collation: None,
            binary: true,
            def: PgTypeDef::Enum {
                labels: vec!["sad".into(), "ok".into()],
            },
        };
        let pair = PgType {
            oid: 16410,
            schema: "public".into(),
            name: "pair".into(),
            sql: "\"public\".\"pair\"".into(),
            collation: None,
            binary: true,
            def: PgTypeDef::Composite {
                fields: vec![
                    PgField {
                        name: "a".into(),
                        ty: mood.clone(),
                    },
                    PgField {
                        name: "b".into(),
                        ty: builtin("int4", 23),
                    },
                    PgField {
                        name: "c".into(),
                        ty: mood.clone(),
                    },
                ],
            },
        };
        let arr = PgType {
            oid: 16411,
            schema: "public".into(),
            name: "_pair".into(),
            sql: "\"public\".\"pair\"[]".into(),
            collation: None,
            binary: true,
            def: PgTypeDef::Array {
                element: Box::new(pair),
                dims: 1,
            },
        };
        let names: Vec<&str> = arr.dependencies().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["mood", "int4", "pair", "_pair"]);
        assert!(!arr.is_user_defined());
        let json = serde_json::to_value(&arr).unwrap();
        assert_eq!(serde_json::from_value::<PgType>(json).unwrap(), arr);
    }
}
