//! How destination tables are laid out, where the destination lets it be chosen: the sort
//! key, partitioning, table settings and column types, per table in a mirror's mapping or for
//! every table as the mirror's default.
//!
//! These are typed and stored with the mirror's statement; what they mean is the
//! destination's to say. Each destination checks in [`Destination::check`] what it can
//! honour and refuses the rest with an error naming the option, so nothing is silently
//! ignored (ClickHouse takes them all; a destination that cannot sort or partition refuses
//! them).
//!
//! The text of `partition_by` and of column types is kept as written here, and parsed by the
//! destination into its own grammar before anything is built from it: user text is never put
//! into DDL as it is.
//!
//! [`Destination::check`]: crate::destination::Destination::check

use serde::{Deserialize, Serialize};

use crate::mirror::TableMapping;
use crate::schema::TableName;

/// A setting's value, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingValue {
    /// An integer or decimal number's text (`8192`, `0.5`).
    Number(String),
    String(String),
    Bool(bool),
}

impl std::fmt::Display for SettingValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingValue::Number(n) => f.write_str(n),
            SettingValue::String(s) => write!(f, "'{}'", s.replace('\'', "''")),
            SettingValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A destination table's layout; each field unset means the destination's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableLayout {
    /// The columns the table is sorted by (in ClickHouse also the key rows are deduplicated
    /// by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<Vec<String>>,
    /// An expression the table is partitioned by, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<String>,
    /// Table settings, in the order written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<(String, SettingValue)>,
    /// Destination types chosen for columns in place of the default mapping, as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub column_types: Vec<(String, String)>,
}

impl TableLayout {
    /// Whether nothing is chosen.
    pub fn is_default(&self) -> bool {
        *self == TableLayout::default()
    }

    /// This layout over `defaults`: what is given here wins, field by field; settings are
    /// merged by name.
    pub fn over(&self, defaults: &TableLayout) -> TableLayout {
        let mut settings = defaults.settings.clone();
        for (name, value) in &self.settings {
            match settings.iter_mut().find(|(n, _)| n == name) {
                Some(s) => s.1 = value.clone(),
                None => settings.push((name.clone(), value.clone())),
            }
        }
        TableLayout {
            order_by: self.order_by.clone().or_else(|| defaults.order_by.clone()),
            partition_by: self
                .partition_by
                .clone()
                .or_else(|| defaults.partition_by.clone()),
            settings,
            column_types: self.column_types.clone(),
        }
    }

    /// The names of what is chosen, for a destination's refusal ("order_by, settings").
    pub fn chosen(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.order_by.is_some() {
            out.push("order_by");
        }
        if self.partition_by.is_some() {
            out.push("partition_by");
        }
        if !self.settings.is_empty() {
            out.push("settings");
        }
        if !self.column_types.is_empty() {
            out.push("column_types");
        }
        out
    }
}

/// Ferry's own columns in a destination table and what a deletion does, from the mirror's
/// options `soft_delete`, `soft_delete_col_name` and `synced_at_col_name` (PeerDB's names).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MetaColumns {
    /// Deleted rows stay visible (flagged) rather than being hidden by the destination.
    pub soft_delete: bool,
    /// The deletion flag's column; the destination's default when `None`.
    pub is_deleted: Option<String>,
    /// The arrival time's column; the destination's default when `None`.
    pub synced_at: Option<String>,
}

/// The layouts of a mirror's tables: the mirror's defaults, and each mapped table's own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layouts {
    pub defaults: TableLayout,
    pub tables: Vec<(TableName, TableLayout)>,
}

impl Layouts {
    /// From a mirror's defaults and its table mapping (empty for a schema mapping).
    pub fn new(defaults: &TableLayout, mapping: &[TableMapping]) -> Layouts {
        Layouts {
            defaults: defaults.clone(),
            tables: mapping
                .iter()
                .filter(|m| !m.layout.is_default())
                .map(|m| (m.source.clone(), m.layout.clone()))
                .collect(),
        }
    }

    /// The layout of a table: its own over the mirror's defaults.
    pub fn of(&self, table: &TableName) -> TableLayout {
        match self.tables.iter().find(|(t, _)| t == table) {
            Some((_, own)) => own.over(&self.defaults),
            None => self.defaults.clone(),
        }
    }
}

/// Why a layout's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LayoutError(pub String);

/// Longest text of a list or settings option.
const MAX_TEXT: usize = 4096;

/// Reads `name = value, …` (a setting's name is a word of letters, digits and `_`; a value
/// a number, a quoted string with `''` for a quote, or `true`/`false`).
pub fn parse_settings(text: &str) -> Result<Vec<(String, SettingValue)>, LayoutError> {
    if text.len() > MAX_TEXT {
        return Err(LayoutError(format!(
            "settings are longer than {MAX_TEXT} bytes"
        )));
    }
    let mut out: Vec<(String, SettingValue)> = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(LayoutError(format!(
                "expected a setting name at \"{}\"",
                head(rest)
            )));
        }
        rest = rest[name_len..].trim_start();
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| LayoutError(format!("expected = after setting {name}")))?
            .trim_start();
        let (value, after) = setting_value(rest)
            .ok_or_else(|| LayoutError(format!("expected a value for setting {name}")))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(LayoutError(format!(
                "setting {name} is given more than once"
            )));
        }
        out.push((name.to_owned(), value));
        rest = after.trim_start();
        if !rest.is_empty() {
            rest = rest
                .strip_prefix(',')
                .ok_or_else(|| LayoutError(format!("expected , at \"{}\"", head(rest))))?
                .trim_start();
            if rest.is_empty() {
                return Err(LayoutError("trailing comma in settings".into()));
            }
        }
    }
    Ok(out)
}

fn head(s: &str) -> String {
    s.chars().take(20).collect()
}

fn setting_value(s: &str) -> Option<(SettingValue, &str)> {
    if let Some(body) = s.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if body[i + 1..].starts_with('\'') {
                    value.push('\'');
                    chars.next();
                    continue;
                }
                return Some((SettingValue::String(value), &body[i + 1..]));
            }
            value.push(c);
        }
        return None;
    }
    let end = s
        .find(|c: char| c == ',' || c.is_whitespace())
        .unwrap_or(s.len());
    let word = &s[..end];
    let value = match word.to_ascii_lowercase().as_str() {
        "true" => SettingValue::Bool(true),
        "false" => SettingValue::Bool(false),
        _ => {
            let digits = word.strip_prefix('-').unwrap_or(word);
            let mut parts = digits.splitn(2, '.');
            let whole = parts.next().unwrap_or_default();
            let fraction = parts.next();
            let ok = !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return None;
            }
            SettingValue::Number(word.to_owned())
        }
    };
    Some((value, &s[end..]))
}

/// Reads a list of column names, `a, "Mixed Case", b`: a bare name is lower-cased, as
/// PostgreSQL does; a double-quoted one is taken as written, `""` standing for a quote.
pub fn parse_column_list(text: &str) -> Result<Vec<String>, LayoutError> {
    if text.len() > MAX_TEXT {
        return Err(LayoutError(format!(
            "the column list is longer than {MAX_TEXT} bytes"
        )));
    }
    let mut out = Vec::new();
    let mut rest = text.trim();
    loop {
        let (name, after) = if let Some(body) = rest.strip_prefix('"') {
            let mut name = String::new();
            let mut end = None;
            let mut chars = body.char_indices();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if body[i + 1..].starts_with('"') {
                        name.push('"');
                        chars.next();
                        continue;
                    }
                    end = Some(i + 1);
                    break;
                }
                name.push(c);
            }
            let end = end.ok_or_else(|| LayoutError("unterminated quoted column name".into()))?;
            (name, &body[end..])
        } else {
            let len = rest
                .find(|c: char| c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            (rest[..len].to_lowercase(), &rest[len..])
        };
        if name.is_empty() {
            return Err(LayoutError(format!(
                "expected a column name at \"{}\"",
                head(rest)
            )));
        }
        out.push(name);
        rest = after.trim_start();
        if rest.is_empty() {
            return Ok(out);
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| LayoutError(format!("expected , at \"{}\"", head(rest))))?
            .trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_read_with_their_types() {
        let s = parse_settings(
            "index_granularity = 4096, storage_policy='it''s', ttl_only_drop_parts=true, x = -0.5",
        )
        .unwrap();
        assert_eq!(
            s,
            vec![
                (
                    "index_granularity".into(),
                    SettingValue::Number("4096".into())
                ),
                ("storage_policy".into(), SettingValue::String("it's".into())),
                ("ttl_only_drop_parts".into(), SettingValue::Bool(true)),
                ("x".into(), SettingValue::Number("-0.5".into())),
            ]
        );
        assert_eq!(s[1].1.to_string(), "'it''s'");
        for bad in [
            "a",
            "a =",
            "a = 1,",
            "a = 1 b = 2",
            "1a = 2",
            "a = 'open",
            "a = 1e5",
            "a = x; DROP",
            "a = 1, a = 2",
            "a-b = 1",
        ] {
            assert!(parse_settings(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_settings("").unwrap(), vec![]);
    }

    #[test]
    fn column_lists_fold_bare_names() {
        assert_eq!(
            parse_column_list(" Tenant_ID, \"Mixed \"\"Q\"\"\",id ").unwrap(),
            vec!["tenant_id", "Mixed \"Q\"", "id"]
        );
        for bad in ["", "a,", "a,,b", "\"open", "a b"] {
            assert!(parse_column_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_table_layout_wins_over_the_defaults() {
        let defaults = TableLayout {
            partition_by: Some("toYYYYMM(_ferry_synced_at)".into()),
            settings: vec![
                (
                    "index_granularity".into(),
                    SettingValue::Number("8192".into()),
                ),
                ("a".into(), SettingValue::Bool(true)),
            ],
            ..Default::default()
        };
        let own = TableLayout {
            order_by: Some(vec!["tenant".into(), "id".into()]),
            settings: vec![(
                "index_granularity".into(),
                SettingValue::Number("1024".into()),
            )],
            ..Default::default()
        };
        let l = own.over(&defaults);
        assert_eq!(l.order_by, own.order_by);
        assert_eq!(l.partition_by, defaults.partition_by);
        assert_eq!(
            l.settings,
            vec![
                (
                    "index_granularity".into(),
                    SettingValue::Number("1024".into())
                ),
                ("a".into(), SettingValue::Bool(true)),
            ]
        );
        assert_eq!(l.chosen(), vec!["order_by", "partition_by", "settings"]);
    }
}
