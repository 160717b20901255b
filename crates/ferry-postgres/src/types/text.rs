//! PostgreSQL's text output formats, as pgoutput sends them.
//!
//! The streaming path runs with `DateStyle = ISO`, `TimeZone = UTC`, `IntervalStyle = postgres`,
//! `extra_float_digits = 3`, `bytea_output = hex` and `lc_monetary = C`, so each kind has one
//! form to read: `t`/`f`; decimal integers; floats in shortest round-trip form with `NaN`,
//! `Infinity`, `-Infinity`; `numeric_out`'s plain decimals (never an exponent); `\x` hex bytes
//! (the older escape form is read too); `8-4-4-4-12` hex UUIDs; ISO dates and timestamps (see
//! [`super::datetime`]).
//!
//! Arrays (`array_out`) are `{…}` with elements separated by `,` and sub-arrays nested in braces
//! (`{{1,2},{3,4}}`), preceded by `[lower:upper]…=` when a lower bound is not 1. An element is
//! double-quoted when it is empty, is `NULL` in any case, or contains `{`, `}`, `,`, `"`, `\` or
//! white space; inside quotes `\` escapes the next character. An unquoted `NULL` (in any case) is
//! the null element, a quoted `"NULL"` the string. Unquoted elements lose surrounding white space
//! and may also use `\` escapes.

use ferry_core::{Value, ValueKind};

use super::{datetime, numeric, DecodeError};

/// PostgreSQL's `MAXDIM`.
const MAX_DIMS: usize = 6;

/// Decodes one non-NULL value from PostgreSQL's text output as a value of `kind`.
pub fn decode_text(kind: &ValueKind, text: &str) -> Result<Value, DecodeError> {
    Ok(match kind {
        ValueKind::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(DecodeError::invalid("bool", "expected t or f")),
        },
        ValueKind::Int16 => Value::Int16(int(text, "int2")?),
        ValueKind::Int32 => Value::Int32(int(text, "int4")?),
        ValueKind::Int64 => Value::Int64(int(text, "int8")?),
        ValueKind::UInt32 => Value::UInt32(int(text, "oid")?),
        ValueKind::Float32 => Value::Float32(float(text, "float4")?),
        ValueKind::Float64 => Value::Float64(float(text, "float8")?),
        ValueKind::Decimal { .. } => {
            if text.starts_with('$') || text.starts_with("-$") {
                Value::Numeric(numeric::parse_money(text)?)
            } else {
                Value::Numeric(numeric::parse_text(text)?)
            }
        }
        ValueKind::Text => Value::Text(text.to_owned()),
        ValueKind::Bytes => Value::Bytes(bytea(text)?),
        ValueKind::Uuid => Value::Uuid(uuid(text)?),
        ValueKind::Date => Value::Date(datetime::parse_date(text)?),
        ValueKind::Timestamp => Value::Timestamp(datetime::parse_timestamp(text, false)?),
        ValueKind::TimestampTz => Value::TimestampTz(datetime::parse_timestamp(text, true)?),
        ValueKind::Array { element, .. } => {
            if matches!(**element, ValueKind::Array { .. }) {
                return Err(DecodeError::invalid("array", "element kind is an array"));
            }
            ArrayParser::new(text, element).parse()?
        }
    })
}

fn int<T: std::str::FromStr>(text: &str, what: &'static str) -> Result<T, DecodeError> {
    // `str::parse` accepts a leading `+`, which PostgreSQL never prints; that is harmless.
    text.parse()
        .map_err(|_| DecodeError::invalid(what, "not an integer in range"))
}

fn float<T: std::str::FromStr>(text: &str, what: &'static str) -> Result<T, DecodeError> {
    // Rust reads `NaN`, `Infinity`, `-Infinity` and exponents (`1e+30`) as PostgreSQL prints them.
    text.parse()
        .map_err(|_| DecodeError::invalid(what, "not a number"))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `bytea` in hex (`\x0aff`) or escape (`a\\b\012`) output.
fn bytea(text: &str) -> Result<Vec<u8>, DecodeError> {
    const WHAT: &str = "bytea";
    if let Some(hex) = text.strip_prefix("\\x") {
        let hex = hex.as_bytes();
        if hex.len() % 2 != 0 {
            return Err(DecodeError::invalid(WHAT, "odd number of hex digits"));
        }
        return hex
            .chunks_exact(2)
            .map(|p| match (hex_val(p[0]), hex_val(p[1])) {
                (Some(h), Some(l)) => Ok(h << 4 | l),
                _ => Err(DecodeError::invalid(WHAT, "bad hex digit")),
            })
            .collect();
    }
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = b.get(i + 1..i + 4).filter(|o| {
                matches!(o[0], b'0'..=b'3') && o[1..].iter().all(|c| matches!(c, b'0'..=b'7'))
            });
            let o = octal.ok_or(DecodeError::invalid(WHAT, "bad escape"))?;
            out.push((o[0] - b'0') << 6 | (o[1] - b'0') << 3 | (o[2] - b'0'));
            i += 4;
        }
    }
    Ok(out)
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
fn uuid(text: &str) -> Result<[u8; 16], DecodeError> {
    let invalid = || DecodeError::invalid("uuid", "expected 8-4-4-4-12 hex digits");
    let b = text.as_bytes();
    if b.len() != 36 {
        return Err(invalid());
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return Err(invalid());
            }
            i += 1;
            continue;
        }
        let (h, l) = (hex_val(b[i]), b.get(i + 1).copied().and_then(hex_val));
        out[n] = match (h, l) {
            (Some(h), Some(l)) => h << 4 | l,
            _ => return Err(invalid()),
        };
        n += 1;
        i += 2;
    }
    Ok(out)
}

fn is_array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

/// A recursive-descent reader for `array_out` output.
struct ArrayParser<'a> {
    text: &'a str,
    pos: usize,
    element: &'a ValueKind,
    /// The length of each dimension, as far as seen.
    dims: Vec<Option<i32>>,
    /// The nesting depth at which elements were found (all must be at the same depth).
    leaf_depth: Option<usize>,
    elements: Vec<Value>,
    /// Scratch space for an element with quotes or escapes.
    scratch: String,
}

const WHAT: &str = "array";

impl<'a> ArrayParser<'a> {
    fn new(text: &'a str, element: &'a ValueKind) -> Self {
        ArrayParser {
            text,
            pos: 0,
            element,
            dims: Vec::new(),
            leaf_depth: None,
            elements: Vec::new(),
            scratch: String::new(),
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_array_space) {
            self.pos += 1;
        }
    }

    fn parse(mut self) -> Result<Value, DecodeError> {
        self.skip_space();
        let declared = if self.peek() == Some(b'[') {
            Some(self.decoration()?)
        } else {
            None
        };
        if self.peek() != Some(b'{') {
            return Err(DecodeError::invalid(WHAT, "expected {"));
        }
        self.level(0)?;
        self.skip_space();
        if self.pos != self.text.len() {
            return Err(DecodeError::invalid(
                WHAT,
                "unexpected text after the array",
            ));
        }
        let dims: Vec<i32> = if self.elements.is_empty() {
            Vec::new()
        } else {
            self.dims.iter().map(|d| d.unwrap_or(0)).collect()
        };
        if let Some(declared) = declared {
            if declared != dims {
                return Err(DecodeError::invalid(
                    WHAT,
                    "dimensions do not match the braces",
                ));
            }
        }
        Ok(Value::Array {
            dims,
            elements: self.elements,
        })
    }

    /// `[lower:upper]…=` → the length of each dimension.
    fn decoration(&mut self) -> Result<Vec<i32>, DecodeError> {
        let mut dims = Vec::new();
        while self.peek() == Some(b'[') {
            self.pos += 1;
            let first = self.bound()?;
            let (lower, upper) = if self.peek() == Some(b':') {
                self.pos += 1;
                (first, self.bound()?)
            } else {
                (1, first)
            };
            if self.peek() != Some(b']') || dims.len() == MAX_DIMS {
                return Err(DecodeError::invalid(WHAT, "bad dimension decoration"));
            }
            self.pos += 1;
            let len = i32::try_from(i64::from(upper) - i64::from(lower) + 1)
                .ok()
                .filter(|&l| l >= 0)
                .ok_or(DecodeError::invalid(WHAT, "bad dimension bounds"))?;
            dims.push(len);
            self.skip_space();
        }
        if self.peek() != Some(b'=') {
            return Err(DecodeError::invalid(WHAT, "expected = after dimensions"));
        }
        self.pos += 1;
        self.skip_space();
        Ok(dims)
    }

    fn bound(&mut self) -> Result<i32, DecodeError> {
        let start = self.pos;
        if self.peek() == Some(b'-') || self.peek() == Some(b'+') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.text[start..self.pos]
            .parse()
            .map_err(|_| DecodeError::invalid(WHAT, "bad dimension bound"))
    }

    /// One `{…}` at nesting `depth`; the cursor is on the `{`.
    fn level(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth >= MAX_DIMS {
            return Err(DecodeError::invalid(WHAT, "too many dimensions"));
        }
        if self.dims.len() <= depth {
            self.dims.push(None);
        }
        self.pos += 1; // '{'
        self.skip_space();
        let mut count: i32 = 0;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            // Only the whole array may be empty (`{}`).
            if depth > 0 {
                return Err(DecodeError::invalid(WHAT, "empty sub-array"));
            }
            return Ok(());
        }
        loop {
            self.skip_space();
            if self.peek() == Some(b'{') {
                self.level(depth + 1)?;
            } else {
                if *self.leaf_depth.get_or_insert(depth) != depth {
                    return Err(DecodeError::invalid(WHAT, "elements at different depths"));
                }
                self.element_value()?;
            }
            count += 1;
            self.skip_space();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(DecodeError::invalid(WHAT, "expected , or }")),
            }
        }
        if self.leaf_depth.is_some_and(|leaf| leaf < depth) {
            return Err(DecodeError::invalid(WHAT, "elements at different depths"));
        }
        match self.dims[depth] {
            None => self.dims[depth] = Some(count),
            Some(n) if n == count => {}
            Some(_) => {
                return Err(DecodeError::invalid(
                    WHAT,
                    "sub-arrays of different lengths",
                ))
            }
        }
        Ok(())
    }

    /// One element, quoted or not; the cursor is on its first non-space character.
    fn element_value(&mut self) -> Result<(), DecodeError> {
        let value = if self.peek() == Some(b'"') {
            self.pos += 1;
            self.scratch.clear();
            loop {
                let Some(b) = self.peek() else {
                    return Err(DecodeError::invalid(WHAT, "unterminated quoted element"));
                };
                match b {
                    b'"' => {
                        self.pos += 1;
                        break;
                    }
                    b'\\' => {
                        self.pos += 1;
                        self.escaped()?;
                    }
                    _ => self.plain_run(|b| b == b'"' || b == b'\\'),
                }
            }
            decode_text(self.element, &self.scratch)?
        } else {
            self.unquoted()?
        };
        self.elements.push(value);
        Ok(())
    }

    /// Appends the run of characters up to the next byte matching `stop` to the scratch text.
    fn plain_run(&mut self, stop: impl Fn(u8) -> bool) {
        let start = self.pos;
        while self.peek().is_some_and(|b| !stop(b)) {
            self.pos += 1;
        }
        // Runs end at ASCII bytes or the end, so they are whole characters.
        self.scratch.push_str(&self.text[start..self.pos]);
    }

    /// Appends the character after a backslash (the cursor is on it) to the scratch text.
    fn escaped(&mut self) -> Result<(), DecodeError> {
        let c = self.text[self.pos..]
            .chars()
            .next()
            .ok_or(DecodeError::invalid(WHAT, "backslash at end of input"))?;
        self.scratch.push(c);
        self.pos += c.len_utf8();
        Ok(())
    }

    fn unquoted(&mut self) -> Result<Value, DecodeError> {
        let stop = |b: u8| matches!(b, b',' | b'{' | b'}' | b'"' | b'\\');
        let start = self.pos;
        while self.peek().is_some_and(|b| !stop(b)) {
            self.pos += 1;
        }
        if self.peek() != Some(b'\\') {
            // The common case: no escapes, borrow the text.
            let raw = self.text[start..self.pos]
                .trim_end_matches(|c: char| c.is_ascii() && is_array_space(c as u8));
            if raw.is_empty() {
                return Err(DecodeError::invalid(WHAT, "empty unquoted element"));
            }
            if raw.eq_ignore_ascii_case("NULL") {
                return Ok(Value::Null);
            }
            return decode_text(self.element, raw);
        }
        // With escapes: escaped characters are kept even if they are white space.
        self.scratch.clear();
        self.scratch.push_str(&self.text[start..self.pos]);
        let mut keep = self.scratch.len();
        while let Some(b) = self.peek() {
            if b == b'\\' {
                self.pos += 1;
                self.escaped()?;
                keep = self.scratch.len();
            } else if matches!(b, b',' | b'{' | b'}' | b'"') {
                break;
            } else {
                let run_start = self.scratch.len();
                self.plain_run(stop);
                let trimmed = self.scratch[run_start..]
                    .trim_end_matches(|c: char| c.is_ascii() && is_array_space(c as u8))
                    .len();
                if trimmed > 0 {
                    keep = run_start + trimmed;
                }
            }
        }
        self.scratch.truncate(keep);
        decode_text(self.element, &self.scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(kind: ValueKind, text: &str) -> Result<Value, DecodeError> {
        decode_text(
            &ValueKind::Array {
                element: Box::new(kind),
                dims: 1,
            },
            text,
        )
    }

    fn texts(dims: Vec<i32>, elements: &[Option<&str>]) -> Value {
        Value::Array {
            dims,
            elements: elements
                .iter()
                .map(|e| e.map_or(Value::Null, |s| Value::Text(s.to_owned())))
                .collect(),
        }
    }

    #[test]
    fn scalars() {
        use ValueKind as K;
        assert_eq!(decode_text(&K::Bool, "t"), Ok(Value::Bool(true)));
        assert!(decode_text(&K::Bool, "true").is_err());
        assert_eq!(decode_text(&K::Int16, "-32768"), Ok(Value::Int16(i16::MIN)));
        assert!(decode_text(&K::Int16, "32768").is_err());
        assert_eq!(
            decode_text(&K::UInt32, "4294967295"),
            Ok(Value::UInt32(u32::MAX))
        );
        assert_eq!(decode_text(&K::Float64, "1e+30"), Ok(Value::Float64(1e30)));
        assert_eq!(
            decode_text(&K::Float64, "-Infinity"),
            Ok(Value::Float64(f64::NEG_INFINITY))
        );
        assert!(matches!(decode_text(&K::Float32, "NaN"), Ok(Value::Float32(f)) if f.is_nan()));
        assert_eq!(decode_text(&K::Float32, "1.1"), Ok(Value::Float32(1.1f32)));
        assert_eq!(
            decode_text(&K::Bytes, "\\x00ff41"),
            Ok(Value::Bytes(vec![0, 0xFF, 0x41]))
        );
        assert_eq!(
            decode_text(&K::Bytes, "a\\\\\\000\\377"),
            Ok(Value::Bytes(vec![b'a', b'\\', 0, 0xFF]))
        );
        assert!(decode_text(&K::Bytes, "\\x0").is_err());
        assert!(decode_text(&K::Bytes, "\\9").is_err());
        assert_eq!(
            decode_text(&K::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Ok(Value::Uuid([
                0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
                0x0a, 0x11
            ]))
        );
        assert!(decode_text(&K::Uuid, "a0eebc999c0b4ef8bb6d6bb9bd380a11").is_err());
        assert!(decode_text(&K::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1é").is_err());
    }

    #[test]
    fn arrays() {
        assert_eq!(
            arr(ValueKind::Text, r#"{a,"b c",NULL,"NULL","",null,"q\"\\x"}"#),
            Ok(texts(
                vec![7],
                &[
                    Some("a"),
                    Some("b c"),
                    None,
                    Some("NULL"),
                    Some(""),
                    None,
                    Some("q\"\\x")
                ]
            ))
        );
        assert_eq!(arr(ValueKind::Text, "{}"), Ok(texts(vec![], &[])));
        assert_eq!(
            arr(ValueKind::Text, "{{a,b},{c,NULL}}"),
            Ok(texts(vec![2, 2], &[Some("a"), Some("b"), Some("c"), None]))
        );
        assert_eq!(
            arr(ValueKind::Text, "[0:1]={x,y}"),
            Ok(texts(vec![2], &[Some("x"), Some("y")]))
        );
        assert_eq!(
            arr(ValueKind::Text, "[1:1][-2:0]={{x,y,z}}"),
            Ok(texts(vec![1, 3], &[Some("x"), Some("y"), Some("z")]))
        );
        // White space around unquoted elements goes; inside and escaped it stays.
        assert_eq!(
            arr(ValueKind::Text, "{ a b , c\\ ,\\ d, é ,\"ü\" }"),
            Ok(texts(
                vec![5],
                &[Some("a b"), Some("c "), Some(" d"), Some("é"), Some("ü")]
            ))
        );
        assert_eq!(
            arr(ValueKind::Int32, "{1, 2 ,NULL}"),
            Ok(Value::Array {
                dims: vec![3],
                elements: vec![Value::Int32(1), Value::Int32(2), Value::Null],
            })
        );
    }

    #[test]
    fn arrays_malformed() {
        for bad in [
            "",
            "{",
            "}",
            "{a",
            "{a,}",
            "{,a}",
            "{a}}",
            "{a}x",
            "{{a},b}",
            "{a,{b}}",
            "{{a,b},{c}}",
            "{{}}",
            "{\"a}",
            "{a\"b}",
            "{a\\",
            "[1:2]={a}",
            "[2:1]={}",
            "[1:2={a,b}",
            "{{{{{{{a}}}}}}}",
            "[a]={x}",
            "{a b\"c\"}",
        ] {
            assert!(arr(ValueKind::Text, bad).is_err(), "{bad}");
        }
        assert!(arr(ValueKind::Int32, "{1,x}").is_err());
    }
}
