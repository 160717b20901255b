//! `numeric`'s binary form (`numeric_send`): reading it as exact decimal text, and writing it.
//!
//! Binary `numeric` is four 16-bit big-endian header words and then the digits:
//!
//! ```text
//! ndigits i16 | weight i16 | sign u16 | dscale u16 | ndigits × digit i16 (base 10000, 0..=9999)
//! ```
//!
//! The value is `Σ digit[i] × 10000^(weight − i)`; `sign` is `0x0000` (positive), `0x4000`
//! (negative), `0xC000` (NaN), `0xD000` (+Infinity) or `0xF000` (−Infinity); `dscale` is the
//! number of fraction digits to display. The decoder prints exactly what `numeric_out` prints:
//! the integer part without leading zeros (`0` when it is empty), then `.` and exactly `dscale`
//! fraction digits, so binary and text decoding agree to the character. The encoder writes
//! what `numeric_send` writes for the same value: no leading or trailing zero digits.

use crate::Numeric;

use super::DecodeError;

const WHAT: &str = "numeric";
pub(crate) const SIGN_POS: u16 = 0x0000;
pub(crate) const SIGN_NEG: u16 = 0x4000;
pub(crate) const SIGN_NAN: u16 = 0xC000;
pub(crate) const SIGN_PINF: u16 = 0xD000;
pub(crate) const SIGN_NINF: u16 = 0xF000;
/// `NUMERIC_DSCALE_MAX`: the display scale fits in 14 bits.
pub(crate) const DSCALE_MAX: u16 = 0x3FFF;

/// Decodes `numeric_send` output (read by [`crate::pg_binary::BinaryNumeric`], which checks
/// every digit) into the text `numeric_out` prints.
pub fn decode(raw: &[u8]) -> Result<Numeric, DecodeError> {
    use crate::pg_binary::BinaryNumeric;
    Ok(match BinaryNumeric::parse(raw)? {
        BinaryNumeric::NaN => Numeric::NaN,
        BinaryNumeric::PosInfinity => Numeric::PosInfinity,
        BinaryNumeric::NegInfinity => Numeric::NegInfinity,
        BinaryNumeric::Finite(f) => Numeric::Finite(f.to_text()),
    })
}

/// Writes `numeric_send`'s form of a numeric. `Finite` text must be what [`decode`] returns (or
/// `numeric_out` prints): optional `-`, digits, optional `.` and fraction digits.
pub fn encode(value: &Numeric, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let special = |sign: u16, out: &mut Vec<u8>| {
        for w in [0u16, 0, sign, 0] {
            out.extend_from_slice(&w.to_be_bytes());
        }
    };
    let text = match value {
        Numeric::NaN => {
            special(SIGN_NAN, out);
            return Ok(());
        }
        Numeric::PosInfinity => {
            special(SIGN_PINF, out);
            return Ok(());
        }
        Numeric::NegInfinity => {
            special(SIGN_NINF, out);
            return Ok(());
        }
        Numeric::Finite(t) => t.as_str(),
    };
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return Err(DecodeError::invalid(WHAT, "not a decimal number")),
        None => (unsigned, ""),
    };
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits_ok(int) || !digits_ok(frac) {
        return Err(DecodeError::invalid(WHAT, "not a decimal number"));
    }
    let dscale = u16::try_from(frac.len())
        .ok()
        .filter(|&d| d <= DSCALE_MAX)
        .ok_or(DecodeError::OutOfRange { what: WHAT })?;
    let int = int.trim_start_matches('0');
    // Base-10000 digits: the integer part is padded on the left and the fraction on the right
    // to whole groups of four decimal digits, so group boundaries fall on the decimal point.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let mut groups: Vec<u16> = Vec::with_capacity((int.len() + frac.len()) / 4 + 2);
    let (mut acc, mut n) = (0u16, 0);
    let padded = std::iter::repeat_n(b'0', int_pad)
        .chain(int.bytes())
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad));
    for b in padded {
        acc = acc * 10 + u16::from(b - b'0');
        n += 1;
        if n == 4 {
            groups.push(acc);
            (acc, n) = (0, 0);
        }
    }
    let int_groups = (int.len() + int_pad) / 4;
    // Leading and trailing zero groups are not sent.
    let (ndigits, start, weight) = match groups.iter().position(|&g| g != 0) {
        None => (0, 0, 0),
        Some(first) => {
            let last = groups.iter().rposition(|&g| g != 0).unwrap_or(first);
            let weight = int_groups as i64 - 1 - first as i64;
            (last + 1 - first, first, weight)
        }
    };
    let ndigits_i16 = i16::try_from(ndigits).map_err(|_| DecodeError::OutOfRange { what: WHAT })?;
    let weight = i16::try_from(weight).map_err(|_| DecodeError::OutOfRange { what: WHAT })?;
    let sign = if negative && ndigits > 0 {
        SIGN_NEG
    } else {
        SIGN_POS
    };
    out.extend_from_slice(&ndigits_i16.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for g in &groups[start..start + ndigits] {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ndigits.to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    fn fin(s: &str) -> Result<Numeric, DecodeError> {
        Ok(Numeric::Finite(s.to_owned()))
    }

    #[test]
    fn binary() {
        assert_eq!(decode(&bin(0, 0, 0, 0, &[])), fin("0"));
        assert_eq!(decode(&bin(0, 0, 0, 2, &[])), fin("0.00"));
        assert_eq!(decode(&bin(1, 0, 0, 0, &[42])), fin("42"));
        // -12.34 = 12 × 10000^0 + 3400 × 10000^-1
        assert_eq!(
            decode(&bin(2, 0, SIGN_NEG, 4, &[12, 3400])),
            fin("-12.3400")
        );
        assert_eq!(decode(&bin(2, 0, 0, 2, &[12, 3400])), fin("12.34"));
        // 1e-30 = 100 × 10000^-8
        assert_eq!(
            decode(&bin(1, -8, 0, 30, &[100])),
            fin("0.000000000000000000000000000001")
        );
        // 10000^2 with trailing zero digits omitted.
        assert_eq!(decode(&bin(1, 2, 0, 0, &[1])), fin("100000000"));
        assert_eq!(decode(&bin(1, 1, 0, 1, &[9999])), fin("99990000.0"));
        assert_eq!(decode(&bin(0, 0, SIGN_NAN, 0, &[])), Ok(Numeric::NaN));
        assert_eq!(
            decode(&bin(0, 0, SIGN_PINF, 0, &[])),
            Ok(Numeric::PosInfinity)
        );
        assert_eq!(
            decode(&bin(0, 0, SIGN_NINF, 0, &[])),
            Ok(Numeric::NegInfinity)
        );
    }

    #[test]
    fn binary_malformed() {
        assert!(decode(&[]).is_err());
        assert!(decode(&bin(2, 0, 0, 0, &[1])).is_err());
        assert!(decode(&bin(1, 0, 0, 0, &[1, 2])).is_err());
        assert!(decode(&bin(-1, 0, 0, 0, &[])).is_err());
        assert!(decode(&bin(1, 0, 0, 0, &[10000])).is_err());
        assert!(decode(&bin(0, 0, 0x1234, 0, &[])).is_err());
        assert!(decode(&bin(0, 0, 0, 0x4000, &[])).is_err());
        // Extreme weights are fine: the text is just long.
        let long = decode(&bin(1, i16::MAX, 0, 0, &[1])).unwrap();
        assert_eq!(long.to_string().len(), 1 + 4 * i16::MAX as usize);
        let tiny = decode(&bin(1, i16::MIN, 0, DSCALE_MAX, &[1])).unwrap();
        assert_eq!(tiny.to_string().len(), 2 + DSCALE_MAX as usize);
        let truncated = bin(2, 0, SIGN_NEG, 4, &[12, 3400]);
        for n in 0..truncated.len() {
            assert!(decode(&truncated[..n]).is_err());
        }
    }

    #[test]
    fn encode_matches_numeric_send_and_round_trips() {
        let enc = |t: &str| {
            let mut out = Vec::new();
            encode(&Numeric::Finite(t.into()), &mut out).map(|_| out)
        };
        assert_eq!(enc("-12.3400"), Ok(bin(2, 0, SIGN_NEG, 4, &[12, 3400])));
        assert_eq!(enc("100000000"), Ok(bin(1, 2, 0, 0, &[1])));
        assert_eq!(enc("0.00"), Ok(bin(0, 0, 0, 2, &[])));
        assert_eq!(enc("-0"), Ok(bin(0, 0, 0, 0, &[])));
        assert_eq!(
            enc("0.000000000000000000000000000001"),
            Ok(bin(1, -8, 0, 30, &[100]))
        );
        for text in [
            "0",
            "1",
            "-1",
            "12.34",
            "99990000.0",
            "123456789012345678901234567890.123456789012345678901234567890",
            "10000",
            "0.0001",
            "-0.5",
            "1.00000",
            "007.10",
        ] {
            let expected = text.trim_start_matches("00");
            assert_eq!(decode(&enc(text).unwrap()), fin(expected), "{text}");
        }
        for special in [Numeric::NaN, Numeric::PosInfinity, Numeric::NegInfinity] {
            let mut out = Vec::new();
            encode(&special, &mut out).unwrap();
            assert_eq!(decode(&out), Ok(special));
        }
        for bad in ["", "-", ".5", "5.", "1e5", "x", "1.2.3"] {
            assert!(enc(bad).is_err(), "{bad}");
        }
    }
}
