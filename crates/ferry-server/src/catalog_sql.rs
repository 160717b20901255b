//! SQL that is not Ferry's own, run against the catalog database, read-only.
//!
//! Each session has a connection of its own to the catalog (opened on first use), so that
//! a client's statements see what a PostgreSQL session would. Every statement runs in a
//! transaction of its own that starts `READ ONLY`, takes a snapshot at once (after which
//! PostgreSQL refuses to make the transaction writable), and is rolled back: reading the
//! catalog views works, and nothing can be changed behind Ferry's back.
//!
//! Results are passed on as PostgreSQL produced them: text values for the simple protocol and
//! for text-format portals, the raw binary values for binary-format portals.

use std::error::Error as StdError;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_catalog::Catalog;
use futures::{stream, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::messages::data::DataRow;
use tokio::sync::Mutex;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

use crate::error::{code, from_catalog_query, ClientError};

const BEGIN: &str = "BEGIN TRANSACTION READ ONLY; SELECT 1";
const END: &str = "ROLLBACK";

/// A session's connection to the catalog database.
pub struct CatalogSession {
    catalog: Catalog,
    client: Mutex<Option<Client>>,
}

impl CatalogSession {
    pub fn new(catalog: Catalog) -> Self {
        CatalogSession {
            catalog,
            client: Mutex::new(None),
        }
    }

    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.catalog.connect().await?);
        }
        let client = guard
            .as_ref()
            .ok_or_else(|| ClientError::new(code::INTERNAL_ERROR, "no catalog connection"))?;
        f(client).await
    }

    /// Prepares a statement: its parameter and result types, or PostgreSQL's error for it.
    pub async fn prepare(&self, text: &str, offset: usize) -> Result<Statement, ClientError> {
        self.with_client(async |c| {
            c.prepare(text)
                .await
                .map_err(|e| from_catalog_query(e, offset))
        })
        .await
    }

    /// Runs a statement and returns its text-format result (simple query protocol).
    pub async fn run_text(&self, text: &str, offset: usize) -> Result<Response, ClientError> {
        let stmt = self.prepare(text, offset).await?;
        let messages = self
            .with_client(async |c| {
                c.batch_execute(BEGIN)
                    .await
                    .map_err(|e| from_catalog_query(e, 0))?;
                let result = c.simple_query(text).await;
                let _ = c.batch_execute(END).await;
                result.map_err(|e| from_catalog_query(e, offset))
            })
            .await?;
        let fields = fields(&stmt, &Format::UnifiedText);
        let mut rows = Vec::new();
        let mut count = 0u64;
        for m in messages {
            match m {
                SimpleQueryMessage::Row(row) => {
                    let mut buf = BytesMut::new();
                    for i in 0..row.len() {
                        put_field(&mut buf, row.get(i).map(str::as_bytes));
                    }
                    rows.push(Ok(DataRow::new(buf, row.len() as i16)));
                }
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        Ok(response(text, fields, rows, count))
    }

    /// Runs a prepared statement with the client's parameters and result formats (extended
    /// query protocol).
    pub async fn run_portal(
        &self,
        text: &str,
        stmt: &Statement,
        parameters: &[Option<Bytes>],
        parameter_format: &Format,
        result_format: &Format,
    ) -> Result<Response, ClientError> {
        let ncols = stmt.columns().len();
        let all_text = (0..ncols).all(|i| result_format.format_for(i) == FieldFormat::Text);
        let all_binary = (0..ncols).all(|i| result_format.format_for(i) == FieldFormat::Binary);
        if parameters.is_empty() && all_text {
            return self.run_text(text, 0).await;
        }
        if !all_binary {
            return Err(ClientError::new(
                code::FEATURE_NOT_SUPPORTED,
                "catalog queries with parameters return binary results only",
            )
            .with_hint("Request binary results, or send the query without parameters."));
        }
        let params = stmt
            .params()
            .iter()
            .enumerate()
            .map(|(i, ty)| {
                let raw = parameters.get(i).cloned().flatten();
                let binary = parameter_format.format_for(i) == FieldFormat::Binary;
                if !binary && raw.is_some() && !is_textual(ty) {
                    return Err(ClientError::new(
                        code::FEATURE_NOT_SUPPORTED,
                        format!(
                            "text-format parameter ${} of type {ty} is not supported here",
                            i + 1
                        ),
                    )
                    .with_hint("Send parameters in binary format."));
                }
                Ok(RawParam(raw))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rows = self
            .with_client(async |c| {
                c.batch_execute(BEGIN)
                    .await
                    .map_err(|e| from_catalog_query(e, 0))?;
                let result = c
                    .query(
                        stmt,
                        &params
                            .iter()
                            .map(|p| p as &(dyn ToSql + Sync))
                            .collect::<Vec<_>>(),
                    )
                    .await;
                let _ = c.batch_execute(END).await;
                result.map_err(|e| from_catalog_query(e, 0))
            })
            .await?;
        let count = rows.len() as u64;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut buf = BytesMut::new();
            for i in 0..ncols {
                let raw: Option<RawValue<'_>> = row
                    .try_get(i)
                    .map_err(|e| ClientError::new(code::INTERNAL_ERROR, e.to_string()))?;
                put_field(&mut buf, raw.map(|r| r.0));
            }
            out.push(Ok(DataRow::new(buf, ncols as i16)));
        }
        Ok(response(text, fields(stmt, result_format), out, count))
    }
}

/// The row description of a prepared statement.
pub fn fields(stmt: &Statement, format: &Format) -> Arc<Vec<FieldInfo>> {
    Arc::new(
        stmt.columns()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                FieldInfo::new(
                    c.name().to_owned(),
                    c.table_oid().map(|o| o as i32),
                    c.column_id(),
                    c.type_().clone(),
                    format.format_for(i),
                )
            })
            .collect(),
    )
}

fn response(
    text: &str,
    fields: Arc<Vec<FieldInfo>>,
    rows: Vec<pgwire::error::PgWireResult<DataRow>>,
    count: u64,
) -> Response {
    let verb = command_verb(text);
    if fields.is_empty() {
        let tag = Tag::new(&verb);
        return Response::Execution(if verb == "SELECT" {
            tag.with_rows(count as usize)
        } else {
            tag
        });
    }
    let mut q = QueryResponse::new(fields, stream::iter(rows).boxed());
    if verb != "SELECT" {
        q.set_command_tag(&verb);
    }
    Response::Query(q)
}

/// The command tag PostgreSQL would give: the statement's first word, upper case.
fn command_verb(text: &str) -> String {
    let word: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    match word.to_ascii_uppercase().as_str() {
        "" | "WITH" | "VALUES" | "TABLE" => "SELECT".to_owned(),
        w => w.to_owned(),
    }
}

fn put_field(buf: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        None => buf.put_i32(-1),
        Some(v) => {
            buf.put_i32(v.len() as i32);
            buf.put_slice(v);
        }
    }
}

fn is_textual(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON
    )
}

/// A column value exactly as PostgreSQL sent it.
struct RawValue<'a>(&'a [u8]);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(RawValue(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A parameter exactly as the client sent it.
#[derive(Debug)]
struct RawParam(Option<Bytes>);

impl ToSql for RawParam {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_verbs() {
        assert_eq!(command_verb("  select 1"), "SELECT");
        assert_eq!(
            command_verb("with x as (select 1) select * from x"),
            "SELECT"
        );
        assert_eq!(command_verb("show search_path"), "SHOW");
        assert_eq!(command_verb("explain select 1"), "EXPLAIN");
    }
}
