//! Exact decimal text → ClickHouse `Decimal(P, S)` in RowBinary.
//!
//! ClickHouse stores `Decimal(P, S)` as the integer `value × 10^S` in two's complement,
//! little-endian, 4 bytes for P ≤ 9, 8 for P ≤ 18, 16 for P ≤ 38 and 32 for P ≤ 76. Such an
//! integer has at most 76 decimal digits (< 2^253), so it is built in a 256-bit accumulator of
//! four u64 limbs and its low bytes are written out. Nothing is ever rounded: a value with
//! non-zero digits beyond S fraction digits, or with more than P − S integer digits, is an error.

use crate::rowbinary::EncodeError;

/// The widest precision ClickHouse supports.
pub const MAX_PRECISION: u8 = 76;

/// A 256-bit unsigned integer, least significant limb first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct U256([u64; 4]);

impl U256 {
    /// `self × 10 + digit`. Cannot overflow for the ≤ 76 digits it is fed.
    fn push_digit(&mut self, digit: u8) {
        let mut carry = u128::from(digit);
        for limb in &mut self.0 {
            let x = u128::from(*limb) * 10 + carry;
            *limb = x as u64; // the low 64 bits
            carry = x >> 64;
        }
    }

    /// Two's complement negation modulo 2^256.
    fn negate(&mut self) {
        let mut carry = true;
        for limb in &mut self.0 {
            let (v, c) = (!*limb).overflowing_add(u64::from(carry));
            *limb = v;
            carry = c;
        }
    }

    fn write_le(&self, width: usize, out: &mut Vec<u8>) {
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

/// Writes the decimal `text` (`-?digits[.digits]`) as `Decimal(precision, scale)`.
pub fn encode(precision: u8, scale: u8, text: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let width = width(precision)
        .filter(|_| scale <= precision)
        .ok_or(EncodeError::DecimalType { precision, scale })?;
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
    let int = int.trim_start_matches('0');
    let scale = usize::from(scale);
    // Fraction digits beyond the scale may only be zeros (dropping them is exact).
    let (frac, extra) = frac.split_at(frac.len().min(scale));
    if extra.bytes().any(|b| b != b'0') {
        return Err(EncodeError::DecimalScale { scale: scale as u8 });
    }
    if int.len() > usize::from(precision) - scale {
        return Err(EncodeError::DecimalOverflow {
            precision,
            scale: scale as u8,
        });
    }
    let mut n = U256::default();
    for b in int.bytes().chain(frac.bytes()) {
        n.push_digit(b - b'0');
    }
    for _ in frac.len()..scale {
        n.push_digit(0);
    }
    if negative {
        n.negate();
    }
    n.write_le(width, out);
    Ok(())
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
