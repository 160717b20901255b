//! Exact decimals → ClickHouse `Decimal(P, S)` in RowBinary.
//!
//! ClickHouse stores `Decimal(P, S)` as the integer `value × 10^S` in two's complement,
//! little-endian, 4 bytes for P ≤ 9, 8 for P ≤ 18, 16 for P ≤ 38 and 32 for P ≤ 76. Such an
//! integer has at most 76 decimal digits (< 2^253), so it is built from the value's decimal
//! digits in a 128-bit accumulator (P ≤ 38) or a 256-bit one of four u64 limbs, and its low
//! bytes are written out. Nothing is ever rounded: a value with non-zero digits beyond S
//! fraction digits, or with more than P − S integer digits, is an error.
//!
//! The digits come from decimal text ([`encode`], as [`Numeric`](ferry_core::Numeric) keeps
//! it) or straight from PostgreSQL's binary `numeric` ([`encode_binary`], as binary COPY sends
//! it, read by [`ferry_core::pg_binary`]), without text in between; both give the same digits
//! for the same value.

use ferry_core::pg_binary::FiniteNumeric;

use crate::rowbinary::EncodeError;

/// The widest precision ClickHouse supports.
pub const MAX_PRECISION: u8 = 76;

/// A 256-bit unsigned integer, least significant limb first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct U256([u64; 4]);

/// An integer accumulator for up to 76 decimal digits.
trait Accumulator: Default {
    /// `self × 10 + digit`. Cannot overflow for the digits it is fed (at most its width's).
    fn push_digit(&mut self, digit: u8);
    /// Writes the low `width` bytes of the value, or of its negation, in two's complement.
    fn write_le(self, negative: bool, width: usize, out: &mut Vec<u8>);
}

impl Accumulator for u128 {
    fn push_digit(&mut self, digit: u8) {
        *self = *self * 10 + u128::from(digit);
    }

    fn write_le(self, negative: bool, width: usize, out: &mut Vec<u8>) {
        let v = if negative { self.wrapping_neg() } else { self };
        out.extend_from_slice(&v.to_le_bytes()[..width]);
    }
}

impl Accumulator for U256 {
    fn push_digit(&mut self, digit: u8) {
        let mut carry = u128::from(digit);
        for limb in &mut self.0 {
            let x = u128::from(*limb) * 10 + carry;
            *limb = x as u64; // the low 64 bits
            carry = x >> 64;
        }
    }

    fn write_le(mut self, negative: bool, width: usize, out: &mut Vec<u8>) {
        if negative {
            // Two's complement negation modulo 2^256.
            let mut carry = true;
            for limb in &mut self.0 {
                let (v, c) = (!*limb).overflowing_add(u64::from(carry));
                *limb = v;
                carry = c;
            }
        }
        let mut bytes = [0u8; 32];
        for (i, limb) in self.0.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out.extend_from_slice(&bytes[..width]);
    }
}

/// The storage width in bytes of `Decimal(precision, …)`.
pub fn width(precision: u8) -> Option<usize> {
    match precision {
        1..=9 => Some(4),
        10..=18 => Some(8),
        19..=38 => Some(16),
        39..=MAX_PRECISION => Some(32),
        _ => None,
    }
}

/// The width of `Decimal(precision, scale)`, or why it is not a ClickHouse type.
pub(crate) fn checked_width(precision: u8, scale: u8) -> Result<usize, EncodeError> {
    width(precision)
        .filter(|_| scale <= precision)
        .ok_or(EncodeError::DecimalType { precision, scale })
}

/// Writes the decimal `text` (`-?digits[.digits]`) as `Decimal(precision, scale)`.
pub fn encode(precision: u8, scale: u8, text: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let width = checked_width(precision, scale)?;
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !digits(int)
        || !digits(frac)
        || (unsigned.contains('.') && frac.is_empty())
    {
        return Err(EncodeError::DecimalSyntax);
    }
    write_scaled(
        precision,
        scale,
        width,
        negative,
        digit_values(int),
        digit_values(frac),
        out,
    )
}

/// The values of ASCII digits.
fn digit_values(s: &str) -> impl Iterator<Item = u8> + Clone + '_ {
    s.bytes().map(|b| b - b'0')
}

/// Writes `±int.frac` (decimal digits, most significant first) as `Decimal(precision, scale)`.
fn write_scaled(
    precision: u8,
    scale: u8,
    width: usize,
    negative: bool,
    int: impl Iterator<Item = u8> + Clone,
    frac: impl Iterator<Item = u8> + Clone,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let s = usize::from(scale);
    // Fraction digits beyond the scale may only be zeros (dropping them is exact).
    if frac.clone().skip(s).any(|d| d != 0) {
        return Err(EncodeError::DecimalScale { scale });
    }
    let int = int.skip_while(|&d| d == 0);
    if int.clone().count() > usize::from(precision - scale) {
        return Err(EncodeError::DecimalOverflow { precision, scale });
    }
    let frac = frac.chain(std::iter::repeat(0)).take(s);
    if width <= 16 {
        accumulate::<u128>(int.chain(frac), negative, width, out);
    } else {
        accumulate::<U256>(int.chain(frac), negative, width, out);
    }
    Ok(())
}

fn accumulate<A: Accumulator>(
    digits: impl Iterator<Item = u8>,
    negative: bool,
    width: usize,
    out: &mut Vec<u8>,
) {
    let mut n = A::default();
    for d in digits {
        n.push_digit(d);
    }
    n.write_le(negative, width, out);
}

/// The largest `Decimal(precision, scale)` (its integer is `10^precision − 1`), or the smallest
/// when `negative`; the caller checked the type.
pub(crate) fn extreme(precision: u8, negative: bool, out: &mut Vec<u8>) {
    let width = width(precision).unwrap_or(32);
    let nines = std::iter::repeat_n(9, usize::from(precision.min(MAX_PRECISION)));
    if width <= 16 {
        accumulate::<u128>(nines, negative, width, out);
    } else {
        accumulate::<U256>(nines, negative, width, out);
    }
}

/// Writes a finite binary `numeric` as `Decimal(precision, scale)`.
pub fn encode_binary(
    precision: u8,
    scale: u8,
    n: &FiniteNumeric<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let width = checked_width(precision, scale)?;
    write_scaled(
        precision,
        scale,
        width,
        n.is_negative(),
        n.int_digits(),
        n.frac_digits(),
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(p: u8, s: u8, text: &str) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        encode(p, s, text, &mut out).map(|()| out)
    }

    #[test]
    fn widths_and_values() {
        assert_eq!(enc(9, 2, "-1.5"), Ok((-150i32).to_le_bytes().to_vec()));
        assert_eq!(enc(9, 2, "0"), Ok(0i32.to_le_bytes().to_vec()));
        assert_eq!(
            enc(9, 0, "999999999"),
            Ok(999_999_999i32.to_le_bytes().to_vec())
        );
        assert_eq!(
            enc(18, 6, "-123456789012.000001"),
            Ok((-123_456_789_012_000_001i64).to_le_bytes().to_vec())
        );
        assert_eq!(
            enc(38, 10, "-0.0000000001"),
            Ok((-1i128).to_le_bytes().to_vec())
        );
        assert_eq!(
            enc(38, 0, "99999999999999999999999999999999999999"),
            Ok((10i128.pow(38) - 1).to_le_bytes().to_vec())
        );
        // 10^75 − 1 … checked through i128 halves: build it from its limbs instead.
        let max76 = "9".repeat(76);
        let bytes = enc(76, 0, &max76).unwrap();
        assert_eq!(bytes.len(), 32);
        let neg = enc(76, 0, &format!("-{max76}")).unwrap();
        // x + (−x) = 0 mod 2^256.
        let mut carry = 0u16;
        for i in 0..32 {
            let s = u16::from(bytes[i]) + u16::from(neg[i]) + carry;
            assert_eq!(s & 0xFF, 0);
            carry = s >> 8;
        }
        assert_eq!(enc(76, 76, &format!("0.{max76}")), Ok(bytes));
        // Trailing zeros beyond the scale are exact; other digits are not.
        assert_eq!(enc(9, 2, "1.5000"), enc(9, 2, "1.5"));
        assert_eq!(enc(9, 2, "007.00"), enc(9, 2, "7"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            enc(9, 2, "1.005"),
            Err(EncodeError::DecimalScale { scale: 2 })
        );
        assert_eq!(
            enc(9, 2, "10000000"),
            Err(EncodeError::DecimalOverflow {
                precision: 9,
                scale: 2
            })
        );
        assert_eq!(
            enc(76, 0, &"9".repeat(77)),
            Err(EncodeError::DecimalOverflow {
                precision: 76,
                scale: 0
            })
        );
        for bad in ["", "-", "1.", ".1", "1e5", "+1", "1.2.3", "١"] {
            assert_eq!(enc(9, 2, bad), Err(EncodeError::DecimalSyntax), "{bad}");
        }
        assert_eq!(
            enc(77, 0, "1"),
            Err(EncodeError::DecimalType {
                precision: 77,
                scale: 0
            })
        );
        assert_eq!(
            enc(2, 3, "0"),
            Err(EncodeError::DecimalType {
                precision: 2,
                scale: 3
            })
        );
    }
}
