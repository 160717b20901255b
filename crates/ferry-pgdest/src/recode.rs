//! Fields in the source's binary send format, made fit for the destination's receive functions.
//!
//! A value's binary form is the same on both servers for the same type, with one exception: it
//! names types by OID in two places, and user and extension types have other OIDs on the
//! destination. `array_send` writes the element type's OID, and `record_send` (composites)
//! writes each field's type OID; `array_recv` and `record_recv` refuse a value whose OIDs are
//! not their own. Such fields are rewritten here with the destination's OIDs, walking the value
//! as the destination's type describes it (ranges and multiranges are walked too, for the
//! arrays and composites inside them); every other field passes as it is. Built-in types
//! (OIDs below 10000) have the same OID everywhere, so a column whose type embeds only those
//! is passed through untouched ([`Recode::Keep`]).
//!
//! A domain sends its base type's form. An enum sends its label, which the destination looks
//! up by name.
//!
//! The input comes from another server: every length is checked against what is left, nesting
//! is bounded by the type's own depth, and a malformed value is an error, never a panic.

use ferry_core::pgtype::{PgType, PgTypeDef};

/// OIDs below this are assigned in PostgreSQL's source code and the same on every server.
const FIXED_OIDS: u32 = 10_000;

// Range flags (rangetypes.h).
const RANGE_EMPTY: u8 = 0x01;
const RANGE_LB_INF: u8 = 0x08;
const RANGE_UB_INF: u8 = 0x10;
const RANGE_LB_NULL: u8 = 0x20;
const RANGE_UB_NULL: u8 = 0x40;

/// How one column's values are rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recode {
    /// As they are.
    Keep,
    Array {
        element_oid: u32,
        element: Box<Recode>,
    },
    Record {
        fields: Vec<(u32, Recode)>,
    },
    Range {
        subtype: Box<Recode>,
    },
    Multirange {
        range: Box<Recode>,
    },
}

/// A field that is not a valid value of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecodeError(pub &'static str);

impl std::fmt::Display for RecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Recode {
    /// The rewriting a column of type `ty` (as the destination describes it, with the
    /// destination's OIDs) needs.
    pub fn plan(ty: &PgType) -> Recode {
        match &ty.def {
            PgTypeDef::Domain { base, .. } => Recode::plan(base),
            PgTypeDef::Array { element, .. } => {
                let inner = Recode::plan(element);
                if inner == Recode::Keep && element.oid < FIXED_OIDS {
                    Recode::Keep
                } else {
                    Recode::Array {
                        element_oid: element.oid,
                        element: Box::new(inner),
                    }
                }
            }
            PgTypeDef::Composite { fields } => {
                let fields: Vec<(u32, Recode)> = fields
                    .iter()
                    .map(|f| (f.ty.oid, Recode::plan(&f.ty)))
                    .collect();
                if fields
                    .iter()
                    .all(|(oid, r)| *oid < FIXED_OIDS && *r == Recode::Keep)
                {
                    Recode::Keep
                } else {
                    Recode::Record { fields }
                }
            }
            PgTypeDef::Range { subtype, .. } => match Recode::plan(subtype) {
                Recode::Keep => Recode::Keep,
                r => Recode::Range {
                    subtype: Box::new(r),
                },
            },
            PgTypeDef::Multirange { range } => match Recode::plan(range) {
                Recode::Keep => Recode::Keep,
                r => Recode::Multirange { range: Box::new(r) },
            },
            PgTypeDef::Builtin
            | PgTypeDef::Extension { .. }
            | PgTypeDef::Base
            | PgTypeDef::Enum { .. } => Recode::Keep,
        }
    }

    pub fn is_keep(&self) -> bool {
        *self == Recode::Keep
    }

    /// Appends `value` rewritten to `out`.
    pub fn apply(&self, value: &[u8], out: &mut Vec<u8>) -> Result<(), RecodeError> {
        let start = out.len();
        let mut input = Input { rest: value };
        let r = self.walk(&mut input, value.len(), out).and_then(|()| {
            input
                .rest
                .is_empty()
                .then_some(())
                .ok_or(RecodeError("bytes after the value"))
        });
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    /// Rewrites a value of `len` bytes taken from `input`.
    fn walk(
        &self,
        input: &mut Input<'_>,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), RecodeError> {
        match self {
            Recode::Keep => {
                out.extend_from_slice(input.take(len)?);
                Ok(())
            }
            _ => {
                let mut inner = Input {
                    rest: input.take(len)?,
                };
                self.walk_value(&mut inner, out)?;
                if inner.rest.is_empty() {
                    Ok(())
                } else {
                    Err(RecodeError("bytes after a nested value"))
                }
            }
        }
    }

    /// Rewrites one whole value (not [`Recode::Keep`]) read from `input`.
    fn walk_value(&self, input: &mut Input<'_>, out: &mut Vec<u8>) -> Result<(), RecodeError> {
        match self {
            Recode::Keep => {
                out.extend_from_slice(input.rest);
                input.rest = &[];
                Ok(())
            }
            Recode::Array {
                element_oid,
                element,
            } => {
                let ndim = input.i32()?;
                let flags = input.i32()?;
                let _source_oid = input.u32()?;
                if !(0..=6).contains(&ndim) {
                    return Err(RecodeError("array with an invalid number of dimensions"));
                }
                out.extend_from_slice(&ndim.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
                out.extend_from_slice(&element_oid.to_be_bytes());
                let mut count: u64 = if ndim == 0 { 0 } else { 1 };
                for _ in 0..ndim {
                    let size = input.i32()?;
                    let lower = input.i32()?;
                    if size < 0 {
                        return Err(RecodeError("array dimension with a negative size"));
                    }
                    count = count.saturating_mul(size as u64);
                    out.extend_from_slice(&size.to_be_bytes());
                    out.extend_from_slice(&lower.to_be_bytes());
                }
                // Every element takes at least its 4-byte length.
                if count > (input.rest.len() / 4) as u64 {
                    return Err(RecodeError("array with more elements than bytes"));
                }
                for _ in 0..count {
                    element.field(input, out)?;
                }
                Ok(())
            }
            Recode::Record { fields } => {
                let n = input.i32()?;
                if n < 0 || n as usize != fields.len() {
                    return Err(RecodeError("composite with another number of fields"));
                }
                out.extend_from_slice(&n.to_be_bytes());
                for (oid, recode) in fields {
                    let _source_oid = input.u32()?;
                    out.extend_from_slice(&oid.to_be_bytes());
                    recode.field(input, out)?;
                }
                Ok(())
            }
            Recode::Range { subtype } => {
                let flags = input.u8()?;
                out.push(flags);
                if flags & (RANGE_EMPTY | RANGE_LB_NULL | RANGE_LB_INF) == 0 {
                    subtype.bound(input, out)?;
                }
                if flags & (RANGE_EMPTY | RANGE_UB_NULL | RANGE_UB_INF) == 0 {
                    subtype.bound(input, out)?;
                }
                Ok(())
            }
            Recode::Multirange { range } => {
                let n = input.i32()?;
                if n < 0 || n as usize > input.rest.len() / 4 {
                    return Err(RecodeError("multirange with an invalid number of ranges"));
                }
                out.extend_from_slice(&n.to_be_bytes());
                for _ in 0..n {
                    range.bound(input, out)?;
                }
                Ok(())
            }
        }
    }

    /// A length-prefixed field where −1 is NULL (array elements, composite fields).
    fn field(&self, input: &mut Input<'_>, out: &mut Vec<u8>) -> Result<(), RecodeError> {
        let len = input.i32()?;
        if len == -1 {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return Ok(());
        }
        self.length_prefixed(len, input, out)
    }

    /// A length-prefixed part that cannot be NULL (range bounds, a multirange's ranges).
    fn bound(&self, input: &mut Input<'_>, out: &mut Vec<u8>) -> Result<(), RecodeError> {
        let len = input.i32()?;
        self.length_prefixed(len, input, out)
    }

    fn length_prefixed(
        &self,
        len: i32,
        input: &mut Input<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), RecodeError> {
        if len < 0 {
            return Err(RecodeError("negative length"));
        }
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        self.walk(input, len as usize, out)?;
        let written = i32::try_from(out.len() - at - 4)
            .map_err(|_| RecodeError("value grew beyond 2 GiB"))?;
        out[at..at + 4].copy_from_slice(&written.to_be_bytes());
        Ok(())
    }
}

struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecodeError> {
        if n > self.rest.len() {
            return Err(RecodeError("value shorter than its lengths say"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn i32(&mut self) -> Result<i32, RecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self) -> Result<u32, RecodeError> {
        Ok(self.i32()? as u32)
    }

    fn u8(&mut self) -> Result<u8, RecodeError> {
        Ok(self.take(1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::pgtype::PgField;

    fn ty(oid: u32, def: PgTypeDef) -> PgType {
        PgType {
            oid,
            schema: if oid < FIXED_OIDS {
                "pg_catalog"
            } else {
                "public"
            }
            .into(),
            name: format!("t{oid}"),
            sql: String::new(),
            collation: None,
            binary: true,
            def,
        }
    }

    fn array_of(oid: u32, element: PgType) -> PgType {
        ty(
            oid,
            PgTypeDef::Array {
                element: Box::new(element),
                dims: 1,
            },
        )
    }

    /// `array_send` of a one-dimensional array of the given elements.
    fn array(elem_oid: u32, elements: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_be_bytes());
        v.extend_from_slice(&i32::from(elements.iter().any(|e| e.is_none())).to_be_bytes());
        v.extend_from_slice(&elem_oid.to_be_bytes());
        v.extend_from_slice(&(elements.len() as i32).to_be_bytes());
        v.extend_from_slice(&1i32.to_be_bytes());
        for e in elements {
            match e {
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    fn record(fields: &[(u32, Option<&[u8]>)]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(fields.len() as i32).to_be_bytes());
        for (oid, f) in fields {
            v.extend_from_slice(&oid.to_be_bytes());
            match f {
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    #[test]
    fn built_in_arrays_and_composites_pass_untouched() {
        let int4 = ty(23, PgTypeDef::Builtin);
        assert_eq!(Recode::plan(&array_of(1007, int4.clone())), Recode::Keep);
        let pair = ty(
            20000,
            PgTypeDef::Composite {
                fields: vec![PgField {
                    name: "a".into(),
                    ty: int4,
                }],
            },
        );
        assert_eq!(Recode::plan(&pair), Recode::Keep);
    }

    #[test]
    fn user_type_oids_are_rewritten_at_every_depth() {
        let mood = ty(30001, PgTypeDef::Enum { labels: vec![] });
        let text = ty(25, PgTypeDef::Builtin);
        // pair AS (m mood, tags text[], ms mood[]), and a column pair[]
        let pair = ty(
            30002,
            PgTypeDef::Composite {
                fields: vec![
                    PgField {
                        name: "m".into(),
                        ty: mood.clone(),
                    },
                    PgField {
                        name: "tags".into(),
                        ty: array_of(1009, text),
                    },
                    PgField {
                        name: "ms".into(),
                        ty: array_of(30003, mood),
                    },
                ],
            },
        );
        let plan = Recode::plan(&array_of(30004, pair));
        let ms = array(17003, &[Some(b"ok"), None]);
        let tags = array(25, &[Some(b"x")]);
        let one = record(&[
            (17001, Some(b"sad")),
            (1009, Some(&tags)),
            (17003, Some(&ms)),
        ]);
        let source = array(17002, &[Some(&one), None]);

        let mut out = Vec::new();
        plan.apply(&source, &mut out).unwrap();
        let ms_dest = array(30001, &[Some(b"ok"), None]);
        let one_dest = record(&[
            (30001, Some(b"sad")),
            (1009, Some(&tags)),
            (30003, Some(&ms_dest)),
        ]);
        assert_eq!(out, array(30002, &[Some(&one_dest), None]));
    }

    #[test]
    fn ranges_of_user_types_are_walked() {
        let dom_arr = array_of(30010, ty(30011, PgTypeDef::Enum { labels: vec![] }));
        let range = ty(
            30012,
            PgTypeDef::Range {
                subtype: Box::new(dom_arr),
                multirange: None,
            },
        );
        let plan = Recode::plan(&range);
        let bound = array(17011, &[Some(b"a")]);
        let mut v = vec![0x02u8]; // lower inclusive, both bounds present
        for _ in 0..2 {
            v.extend_from_slice(&(bound.len() as i32).to_be_bytes());
            v.extend_from_slice(&bound);
        }
        let mut out = Vec::new();
        plan.apply(&v, &mut out).unwrap();
        let want_bound = array(30011, &[Some(b"a")]);
        let mut want = vec![0x02u8];
        for _ in 0..2 {
            want.extend_from_slice(&(want_bound.len() as i32).to_be_bytes());
            want.extend_from_slice(&want_bound);
        }
        assert_eq!(out, want);
        // An empty range has no bounds.
        let mut out = Vec::new();
        plan.apply(&[RANGE_EMPTY], &mut out).unwrap();
        assert_eq!(out, [RANGE_EMPTY]);
    }

    #[test]
    fn malformed_values_are_errors_at_every_cut() {
        let plan = Recode::plan(&array_of(
            30020,
            ty(30021, PgTypeDef::Enum { labels: vec![] }),
        ));
        let good = array(17021, &[Some(b"abc"), None, Some(b"")]);
        let mut out = vec![9];
        for cut in 0..good.len() {
            assert!(plan.apply(&good[..cut], &mut out).is_err(), "cut {cut}");
            assert_eq!(out, [9], "nothing is left behind");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(plan.apply(&long, &mut out).is_err());
        // A huge element count with few bytes is refused before any work.
        let mut huge = array(17021, &[]);
        huge[12..16].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(plan.apply(&huge, &mut out).is_err());
        // Random bytes never panic.
        let mut x = 12345u32;
        for _ in 0..2000 {
            let n = (x % 40) as usize;
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8 % 4
                })
                .collect();
            let _ = plan.apply(&bytes, &mut Vec::new());
        }
    }
}
