//! PostgreSQL's binary send formats that take more than a byte swap to read: `numeric` and
//! arrays.
//!
//! The source reads them into [`Value`](crate::Value)s and the destination transcodes them
//! straight into its own format; both read them here, so both accept exactly the same fields.
//! Integers are big-endian. Reading never panics and never allocates.
//!
//! `numeric` (`numeric_send`) is four 16-bit header words and then the digits:
//!
//! ```text
//! ndigits i16 | weight i16 | sign u16 | dscale u16 | ndigits × digit i16 (base 10000, 0..=9999)
//! ```
//!
//! The value is `Σ digit[i] × 10000^(weight − i)`; `sign` is `0x0000` (positive), `0x4000`
//! (negative), `0xC000` (NaN), `0xD000` (+Infinity) or `0xF000` (−Infinity); `dscale` is the
//! number of fraction digits to display. Its decimal digits are read as `numeric_out` prints
//! them: the integer part (four per base-10000 digit up to `weight`) and exactly `dscale`
//! fraction digits.
//!
//! An array (`array_send`) is `ndim i32 | has_nulls i32 | element oid u32`, then `ndim` pairs of
//! `length i32 | lower bound i32`, then every element in row-major order as `length i32` (−1 for
//! NULL) and that many bytes in the element's own binary format. An empty array has `ndim = 0`
//! and nothing after the header.

/// A field that is not in its type's binary format. Messages never include the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} value: {reason}")]
pub struct FormatError {
    pub what: &'static str,
    pub reason: &'static str,
}

const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;
/// `NUMERIC_DSCALE_MAX`: the display scale fits in 14 bits.
const DSCALE_MAX: u16 = 0x3FFF;
/// PostgreSQL's `MAXDIM`.
pub const MAX_DIMS: usize = 6;

/// A binary `numeric`, checked but not converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryNumeric<'a> {
    NaN,
    PosInfinity,
    NegInfinity,
    Finite(FiniteNumeric<'a>),
}

/// A finite binary `numeric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiniteNumeric<'a> {
    negative: bool,
    weight: i16,
    dscale: u16,
    /// The base-10000 digits, two bytes each, every one checked to be at most 9999.
    digits: &'a [u8],
}

impl<'a> BinaryNumeric<'a> {
    /// Checks `numeric_send` output: the length matches the digit count, the sign is known, a
    /// finite value's display scale is in range and every digit is a base-10000 digit.
    pub fn parse(raw: &'a [u8]) -> Result<BinaryNumeric<'a>, FormatError> {
        let bad = |reason| FormatError {
            what: "numeric",
            reason,
        };
        let Some((header, digits)) = raw.split_first_chunk::<8>() else {
            return Err(bad("truncated"));
        };
        let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
        let ndigits = usize::try_from(word(0) as i16).map_err(|_| bad("negative digit count"))?;
        if digits.len() != 2 * ndigits {
            return Err(bad("length does not match the digit count"));
        }
        let negative = match word(4) {
            SIGN_POS => false,
            SIGN_NEG => true,
            SIGN_NAN => return Ok(BinaryNumeric::NaN),
            SIGN_PINF => return Ok(BinaryNumeric::PosInfinity),
            SIGN_NINF => return Ok(BinaryNumeric::NegInfinity),
            _ => return Err(bad("unknown sign")),
        };
        let dscale = word(6);
        if dscale > DSCALE_MAX {
            return Err(bad("display scale out of range"));
        }
        if digits
            .chunks_exact(2)
            .any(|d| u16::from_be_bytes([d[0], d[1]]) > 9999)
        {
            return Err(bad("digit out of range"));
        }
        Ok(BinaryNumeric::Finite(FiniteNumeric {
            negative,
            weight: word(2) as i16,
            dscale,
            digits,
        }))
    }
}

impl FiniteNumeric<'_> {
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Base-10000 digit `group` (0 outside the digits sent).
    fn group(&self, group: i64) -> u16 {
        usize::try_from(group)
            .ok()
            .and_then(|g| self.digits.get(2 * g..2 * g + 2))
            .map_or(0, |d| u16::from_be_bytes([d[0], d[1]]))
    }

    /// The four decimal digits of base-10000 digit `group`.
    fn four(&self, group: i64) -> [u8; 4] {
        let d = self.group(group);
        // Each is below 10.
        [
            (d / 1000) as u8,
            (d / 100 % 10) as u8,
            (d / 10 % 10) as u8,
            (d % 10) as u8,
        ]
    }

    /// The integer part's decimal digits, most significant first, four per base-10000 digit up
    /// to `weight` (leading zeros included; none when `weight < 0`).
    pub fn int_digits(&self) -> impl Iterator<Item = u8> + Clone + '_ {
        let groups = if self.weight < 0 {
            0
        } else {
            i64::from(self.weight) + 1
        };
        (0..groups).flat_map(|g| self.four(g))
    }

    /// Exactly `dscale` fraction digits.
    pub fn frac_digits(&self) -> impl Iterator<Item = u8> + Clone + '_ {
        let first = i64::from(self.weight) + 1;
        let groups = i64::from(self.dscale.div_ceil(4));
        (first..first + groups)
            .flat_map(|g| self.four(g))
            .take(usize::from(self.dscale))
    }

    /// The value as `numeric_out` prints it: the integer part (`0` when empty), then `.` and
    /// exactly `dscale` fraction digits.
    pub fn to_text(&self) -> String {
        let int_len = if self.weight < 0 {
            1
        } else {
            4 * (self.weight as usize + 1)
        };
        let mut s = String::with_capacity(2 + int_len + usize::from(self.dscale));
        if self.negative {
            s.push('-');
        }
        let digit = |d: u8| char::from(b'0' + d);
        if self.weight < 0 {
            s.push('0');
        } else {
            // The first base-10000 digit without its leading zeros, the others in full.
            let first = self.group(0).to_string();
            s.push_str(&first);
            s.extend(self.int_digits().skip(4).map(digit));
        }
        if self.dscale > 0 {
            s.push('.');
            s.extend(self.frac_digits().map(digit));
        }
        s
    }
}

/// A binary array, read in place: its shape, then its elements one by one.
#[derive(Debug, Clone)]
pub struct BinaryArray<'a> {
    dims: [i32; MAX_DIMS],
    lower_bounds: [i32; MAX_DIMS],
    ndim: usize,
    count: usize,
    /// The elements not read yet.
    rest: &'a [u8],
}

const ARRAY: &str = "array";
const TRUNCATED: FormatError = FormatError {
    what: ARRAY,
    reason: "truncated",
};

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], FormatError> {
    if rest.len() < n {
        return Err(TRUNCATED);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn i32_at(rest: &mut &[u8]) -> Result<i32, FormatError> {
    let b = take(rest, 4)?;
    Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> BinaryArray<'a> {
    /// Reads the header and checks the shape: at most [`MAX_DIMS`] dimensions, none negative,
    /// and no more elements than the bytes left could hold (each takes at least its length).
    pub fn parse(raw: &'a [u8]) -> Result<BinaryArray<'a>, FormatError> {
        let bad = |reason| FormatError {
            what: ARRAY,
            reason,
        };
        let mut rest = raw;
        let ndim = i32_at(&mut rest)?;
        let _has_nulls = i32_at(&mut rest)?;
        let _element_oid = i32_at(&mut rest)?;
        let ndim = usize::try_from(ndim)
            .ok()
            .filter(|&n| n <= MAX_DIMS)
            .ok_or(bad("bad number of dimensions"))?;
        let mut dims = [0; MAX_DIMS];
        let mut lower_bounds = [0; MAX_DIMS];
        let mut count: usize = 1;
        for d in 0..ndim {
            let len = i32_at(&mut rest)?;
            lower_bounds[d] = i32_at(&mut rest)?;
            let n = usize::try_from(len).map_err(|_| bad("negative length"))?;
            count = count
                .checked_mul(n)
                .filter(|&c| c <= rest.len() / 4)
                .ok_or(TRUNCATED)?;
            dims[d] = len;
        }
        Ok(BinaryArray {
            dims,
            lower_bounds,
            ndim,
            count: if ndim == 0 { 0 } else { count },
            rest,
        })
    }

    /// The length of each dimension, outermost first (none for an empty array).
    pub fn dims(&self) -> &[i32] {
        &self.dims[..self.ndim]
    }

    /// The lower bound of each dimension.
    pub fn lower_bounds(&self) -> &[i32] {
        &self.lower_bounds[..self.ndim]
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The next element's bytes (`None` for NULL). Call it [`BinaryArray::len`] times.
    pub fn next_element(&mut self) -> Result<Option<&'a [u8]>, FormatError> {
        let len = i32_at(&mut self.rest)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| FormatError {
            what: ARRAY,
            reason: "bad element length",
        })?;
        take(&mut self.rest, len).map(Some)
    }

    /// Checks that nothing follows the last element.
    pub fn finish(&self) -> Result<(), FormatError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FormatError {
                what: ARRAY,
                reason: "trailing bytes",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits as u16, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    fn text(raw: &[u8]) -> String {
        match BinaryNumeric::parse(raw).unwrap() {
            BinaryNumeric::Finite(f) => f.to_text(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn numerics() {
        assert_eq!(text(&numeric(0, 0, 0, 2, &[])), "0.00");
        assert_eq!(text(&numeric(2, 0, SIGN_NEG, 4, &[12, 3400])), "-12.3400");
        assert_eq!(
            text(&numeric(1, -8, 0, 30, &[100])),
            format!("0.{}1", "0".repeat(29))
        );
        assert_eq!(text(&numeric(1, 2, 0, 0, &[1])), "100000000");
        // A leading zero digit (never sent by PostgreSQL) is printed as numeric_out would.
        assert_eq!(text(&numeric(2, 1, 0, 0, &[0, 5])), "00005");
        assert_eq!(text(&numeric(0, 0, SIGN_NAN, 0, &[])), "NaN");
        let raw = numeric(2, 0, SIGN_NEG, 3, &[12, 3456]);
        let f = match BinaryNumeric::parse(&raw).unwrap() {
            BinaryNumeric::Finite(f) => f,
            other => panic!("{other:?}"),
        };
        assert!(f.is_negative());
        assert_eq!(f.int_digits().collect::<Vec<_>>(), [0, 0, 1, 2]);
        assert_eq!(f.frac_digits().collect::<Vec<_>>(), [3, 4, 5]);
        for bad in [
            numeric(2, 0, 0, 0, &[1]),
            numeric(-1, 0, 0, 0, &[]),
            numeric(1, 0, 0, 0, &[10_000]),
            numeric(0, 0, 0x1234, 0, &[]),
            numeric(0, 0, 0, 0x4000, &[]),
        ] {
            assert!(BinaryNumeric::parse(&bad).is_err());
            for n in 0..bad.len() {
                assert!(BinaryNumeric::parse(&bad[..n]).is_err());
            }
        }
    }

    #[test]
    fn arrays() {
        let mut raw = Vec::new();
        for w in [2i32, 1, 23, 2, 0, 1, 1] {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        raw.extend_from_slice(&(-1i32).to_be_bytes());
        raw.extend_from_slice(&1i32.to_be_bytes());
        raw.push(7);
        let mut a = BinaryArray::parse(&raw).unwrap();
        assert_eq!(
            (a.dims(), a.lower_bounds(), a.len()),
            (&[2, 1][..], &[0, 1][..], 2)
        );
        assert_eq!(a.next_element(), Ok(None));
        assert_eq!(a.next_element(), Ok(Some(&[7][..])));
        assert_eq!(a.finish(), Ok(()));
        assert!(a.next_element().is_err());
        for n in 0..raw.len() {
            let Ok(mut a) = BinaryArray::parse(&raw[..n]) else {
                continue;
            };
            let elements: Result<Vec<_>, _> = (0..a.len()).map(|_| a.next_element()).collect();
            assert!(elements.is_err() || a.finish().is_err(), "prefix {n}");
        }
        // Absurd shapes are refused before anything is read.
        let mut huge = Vec::new();
        for w in [2i32, 0, 23, i32::MAX, 1, i32::MAX, 1] {
            huge.extend_from_slice(&w.to_be_bytes());
        }
        assert!(BinaryArray::parse(&huge).is_err());
        let mut deep = Vec::new();
        for w in [7i32, 0, 23] {
            deep.extend_from_slice(&w.to_be_bytes());
        }
        assert!(BinaryArray::parse(&deep).is_err());
    }
}
