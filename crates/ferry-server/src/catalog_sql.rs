//! SQL that is not Ferry's own, run against the catalog database as the reader role.
//!
//! Statements reach here only after the parser's allow-list passed them (reads only). They
//! run in a [`ReadTransaction`] of the shared reader pool (`ferry_catalog::reader`): read-only,
//! as a role that may read the views in `public` and nothing else, with a statement timeout.
//! Each statement is first prepared, which makes PostgreSQL itself refuse a text that holds
//! more than one statement, and gives the result's column types.
//!
//! Simple-protocol results are streamed to the client as PostgreSQL produces them (text
//! values), so a large result costs no memory. Extended-protocol results are read whole
//! before they are answered (up to [`EXTENDED_RESULT_LIMIT`]): the portal may be kept by the
//! client, and a transaction must not outlive the message that runs it.

use std::error::Error as StdError;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_catalog::ReadTransaction;
use futures::{stream, SinkExt, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::PgWireError;
use pgwire::messages::data::{DataRow, RowDescription};
use pgwire::messages::PgWireBackendMessage;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};
use tokio_postgres::{SimpleQueryMessage, Statement};

use crate::error::{code, from_catalog_query, ClientError};
use crate::frontdoor::Client;

/// The most an extended-protocol result may hold, in bytes of row data.
pub const EXTENDED_RESULT_LIMIT: usize = 16 << 20;

/// A result column: what a row description says about it.
#[derive(Debug, Clone)]
pub struct Column {
    name: String,
    table_oid: Option<u32>,
    column_id: Option<i16>,
    ty: Type,
}

/// What preparing a statement told: its parameter and column types.
#[derive(Debug, Clone)]
pub struct Described {
    pub params: Vec<Type>,
    pub columns: Arc<Vec<Column>>,
}

/// Why a statement stopped: an error for the client, or the client's connection failed.
pub enum Stop {
    Client(ClientError),
    Io(PgWireError),
}

impl Stop {
    pub fn io(e: std::io::Error) -> Stop {
        Stop::Io(e.into())
    }
}

impl From<ClientError> for Stop {
    fn from(e: ClientError) -> Self {
        Stop::Client(e)
    }
}

fn columns(stmt: &Statement) -> Arc<Vec<Column>> {
    Arc::new(
        stmt.columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_owned(),
                table_oid: c.table_oid(),
                column_id: c.column_id(),
                ty: c.type_().clone(),
            })
            .collect(),
    )
}

/// The row description of `columns` in `format`.
pub fn fields(columns: &[Column], format: &Format) -> Arc<Vec<FieldInfo>> {
    Arc::new(
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                FieldInfo::new(
                    c.name.clone(),
                    c.table_oid.map(|o| o as i32),
                    c.column_id,
                    c.ty.clone(),
                    format.format_for(i),
                )
            })
            .collect(),
    )
}

/// Prepares `text` to learn its types (extended protocol: Parse).
pub async fn describe(
    tx: &ReadTransaction,
    text: &str,
    offset: usize,
) -> Result<Described, ClientError> {
    let stmt = tx
        .prepare(text)
        .await
        .map_err(|e| from_catalog_query(e, offset))?;
    Ok(Described {
        params: stmt.params().to_vec(),
        columns: columns(&stmt),
    })
}

/// Runs one statement of a simple query and streams its result to the client: row
/// description, rows, command tag.
pub async fn run_simple(
    tx: &ReadTransaction,
    text: &str,
    offset: usize,
    out: &mut Client,
) -> Result<(), Stop> {
    let stmt = tx
        .prepare(text)
        .await
        .map_err(|e| from_catalog_query(e, offset))?;
    let cols = columns(&stmt);
    drop(stmt);
    let rows = tx
        .simple_query_raw(text)
        .await
        .map_err(|e| from_catalog_query(e, offset))?;
    let mut rows = Box::pin(rows);
    let description = RowDescription::new(
        fields(&cols, &Format::UnifiedText)
            .iter()
            .map(Into::into)
            .collect(),
    );
    out.feed(PgWireBackendMessage::RowDescription(description))
        .await
        .map_err(Stop::io)?;
    let mut count = 0u64;
    while let Some(message) = rows.next().await {
        match message.map_err(|e| from_catalog_query(e, offset))? {
            SimpleQueryMessage::Row(row) => {
                let mut buf = BytesMut::new();
                for i in 0..row.len() {
                    put_field(&mut buf, row.get(i).map(str::as_bytes));
                }
                let row = DataRow::new(buf, row.len() as i16);
                out.feed(PgWireBackendMessage::DataRow(row))
                    .await
                    .map_err(Stop::io)?;
            }
            SimpleQueryMessage::CommandComplete(n) => count = n,
            _ => {}
        }
    }
    out.feed(PgWireBackendMessage::CommandComplete(
        tag(text, count).into(),
    ))
    .await
    .map_err(Stop::io)?;
    Ok(())
}

/// Runs a bound portal (extended protocol), reading the whole result.
pub async fn run_portal(
    tx: &ReadTransaction,
    text: &str,
    described: &Described,
    parameters: &[Option<Bytes>],
    parameter_format: &Format,
    result_format: &Format,
) -> Result<Response, ClientError> {
    let stmt = tx
        .prepare(text)
        .await
        .map_err(|e| from_catalog_query(e, 0))?;
    let same_types = stmt.params() == described.params.as_slice()
        && stmt.columns().len() == described.columns.len()
        && stmt
            .columns()
            .iter()
            .zip(described.columns.iter())
            .all(|(a, b)| a.type_() == &b.ty);
    if !same_types {
        return Err(ClientError::new(
            code::FEATURE_NOT_SUPPORTED,
            "cached plan must not change result type",
        )
        .with_hint("The catalog changed since the statement was prepared: prepare it again."));
    }
    let ncols = stmt.columns().len();
    let all_text = (0..ncols).all(|i| result_format.format_for(i) == FieldFormat::Text);
    let all_binary = (0..ncols).all(|i| result_format.format_for(i) == FieldFormat::Binary);
    let mut rows = Vec::new();
    let mut size = 0usize;
    let mut keep = |buf: BytesMut, n: usize| {
        size += buf.len();
        if size > EXTENDED_RESULT_LIMIT {
            return Err(ClientError::new(
                code::PROGRAM_LIMIT_EXCEEDED,
                format!("result is larger than {EXTENDED_RESULT_LIMIT} bytes"),
            )
            .with_hint("Add a LIMIT, or send the query with the simple query protocol (as psql does), which streams it."));
        }
        rows.push(Ok(DataRow::new(buf, n as i16)));
        Ok(())
    };
    if parameters.is_empty() && all_text {
        drop(stmt);
        let mut stream = Box::pin(
            tx.simple_query_raw(text)
                .await
                .map_err(|e| from_catalog_query(e, 0))?,
        );
        while let Some(message) = stream.next().await {
            if let SimpleQueryMessage::Row(row) = message.map_err(|e| from_catalog_query(e, 0))? {
                let mut buf = BytesMut::new();
                for i in 0..row.len() {
                    put_field(&mut buf, row.get(i).map(str::as_bytes));
                }
                keep(buf, row.len())?;
            }
        }
    } else {
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
        let mut stream = Box::pin(
            tx.query_raw(&stmt, params.iter().map(|p| p as &(dyn ToSql + Sync)))
                .await
                .map_err(|e| from_catalog_query(e, 0))?,
        );
        while let Some(row) = stream.next().await {
            let row = row.map_err(|e| from_catalog_query(e, 0))?;
            let mut buf = BytesMut::new();
            for i in 0..ncols {
                let raw: Option<RawValue<'_>> = row
                    .try_get(i)
                    .map_err(|e| ClientError::new(code::INTERNAL_ERROR, e.to_string()))?;
                put_field(&mut buf, raw.map(|r| r.0));
            }
            keep(buf, ncols)?;
        }
    }
    let fields = fields(&described.columns, result_format);
    let mut q = QueryResponse::new(fields, stream::iter(rows).boxed());
    let verb = command_verb(text);
    if verb != "SELECT" {
        q.set_command_tag(&verb);
    }
    Ok(Response::Query(q))
}

/// The command tag PostgreSQL gives: `SELECT n`, or `SHOW`, `EXPLAIN`.
fn tag(text: &str, rows: u64) -> Tag {
    let verb = command_verb(text);
    let tag = Tag::new(&verb);
    if verb == "SELECT" {
        tag.with_rows(rows as usize)
    } else {
        tag
    }
}

/// The statement's first word, upper case; queries are `SELECT`.
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
    fn command_tags() {
        assert_eq!(command_verb("  select 1"), "SELECT");
        assert_eq!(
            command_verb("with x as (select 1) select * from x"),
            "SELECT"
        );
        assert_eq!(command_verb("show search_path"), "SHOW");
        assert_eq!(command_verb("explain select 1"), "EXPLAIN");
    }
}
