//! `numeric` in binary and text, and `money`'s text.
//!
//! Binary `numeric` (PostgreSQL's `numeric_send`) is four 16-bit big-endian header words and
//! then the digits:
//!
//! ```text
//! ndigits i16 | weight i16 | sign u16 | dscale u16 | ndigits × digit i16 (base 10000, 0..=9999)
//! ```
//!
//! The value is `Σ digit[i] × 10000^(weight − i)`; `sign` is `0x0000` (positive), `0x4000`
//! (negative), `0xC000` (NaN), `0xD000` (+Infinity) or `0xF000` (−Infinity); `dscale` is the
//! number of fraction digits to display. The decoder prints exactly what `numeric_out` prints:
//! the integer part without leading zeros (`0` when it is empty), then `.` and exactly `dscale`
//! fraction digits, so binary and text decoding agree to the character.

use ferry_core::Numeric;

use super::DecodeError;

const WHAT: &str = "numeric";
const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;
/// `NUMERIC_DSCALE_MAX`: the display scale fits in 14 bits.
const DSCALE_MAX: u16 = 0x3FFF;

/// Decodes `numeric_send` output.
pub(super) fn decode_binary(raw: &[u8]) -> Result<Numeric, DecodeError> {
    if raw.len() < 8 {
        return Err(DecodeError::Truncated { what: WHAT });
    }
    let word = |i: usize| u16::from_be_bytes([raw[i], raw[i + 1]]);
    let ndigits = word(0) as i16;
    let weight = i64::from(word(2) as i16);
    let sign = word(4);
    let dscale = word(6);
    let ndigits =
        usize::try_from(ndigits).map_err(|_| DecodeError::invalid(WHAT, "negative digit count"))?;
    let expected = 8 + 2 * ndigits;
    if raw.len() != expected {
        return Err(DecodeError::Length {
            what: WHAT,
            expected,
            got: raw.len(),
        });
    }
    let negative = match sign {
        SIGN_POS => false,
        SIGN_NEG => true,
        SIGN_NAN => return Ok(Numeric::NaN),
        SIGN_PINF => return Ok(Numeric::PosInfinity),
        SIGN_NINF => return Ok(Numeric::NegInfinity),
        _ => return Err(DecodeError::invalid(WHAT, "unknown sign")),
    };
    if dscale > DSCALE_MAX {
        return Err(DecodeError::invalid(WHAT, "display scale out of range"));
    }
    let digits = &raw[8..];
    let digit = |i: i64| -> Result<u16, DecodeError> {
        match usize::try_from(i) {
            Ok(i) if i < ndigits => {
                let d = u16::from_be_bytes([digits[2 * i], digits[2 * i + 1]]);
                if d > 9999 {
                    return Err(DecodeError::invalid(WHAT, "digit out of range"));
                }
                Ok(d)
            }
            _ => Ok(0),
        }
    };
    // Every digit is checked even if it is beyond the display scale.
    for i in 0..ndigits as i64 {
        digit(i)?;
    }

    let int_len = if weight < 0 {
        1
    } else {
        4 * (weight as usize + 1)
    };
    let mut out = String::with_capacity(2 + int_len + usize::from(dscale));
    if negative {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i)?;
            if i == 0 {
                push_u16(&mut out, d);
            } else {
                push_group(&mut out, d, 4);
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut left = usize::from(dscale);
        let mut i = weight + 1;
        while left > 0 {
            let n = left.min(4);
            push_group(&mut out, digit(i)?, n);
            left -= n;
            i += 1;
        }
    }
    Ok(Numeric::Finite(out))
}

fn push_u16(out: &mut String, d: u16) {
    let mut buf = [0u8; 5];
    let mut n = d;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

/// The first `n` of the four decimal digits of a base-10000 digit, zero-padded.
fn push_group(out: &mut String, d: u16, n: usize) {
    let digits = [d / 1000, d / 100 % 10, d / 10 % 10, d % 10];
    for &x in &digits[..n] {
        out.push(char::from(b'0' + x as u8));
    }
}

/// Reads `numeric_out` output: `NaN`, `Infinity`, `-Infinity` or `-?digits[.digits]`.
pub(super) fn parse_text(text: &str) -> Result<Numeric, DecodeError> {
    match text {
        "NaN" => return Ok(Numeric::NaN),
        "Infinity" => return Ok(Numeric::PosInfinity),
        "-Infinity" => return Ok(Numeric::NegInfinity),
        _ => {}
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (unsigned, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !frac.is_none_or(all_digits) {
        return Err(DecodeError::invalid(WHAT, "not a decimal number"));
    }
    Ok(Numeric::Finite(text.to_owned()))
}

/// Reads `money` output in the `C` monetary locale (`$1,234.56`, `-$0.50`) as a plain decimal
/// (`1234.56`, `-0.50`). Anything else is rejected rather than guessed at: a locale with a
/// decimal comma would otherwise be misread.
pub(super) fn parse_money(text: &str) -> Result<Numeric, DecodeError> {
    const WHAT: &str = "money";
    let invalid = || DecodeError::invalid(WHAT, "not in the C locale's money format");
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let rest = rest.strip_prefix('$').ok_or_else(invalid)?;
    let (int, frac) = match rest.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(text.len());
    if negative {
        out.push('-');
    }
    for (i, group) in int.split(',').enumerate() {
        let ok = if i == 0 {
            (1..=3).contains(&group.len())
        } else {
            group.len() == 3
        };
        if !ok || !group.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        out.push_str(group);
    }
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        out.push('.');
        out.push_str(frac);
    }
    Ok(Numeric::Finite(out))
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
        assert_eq!(decode_binary(&bin(0, 0, 0, 0, &[])), fin("0"));
        assert_eq!(decode_binary(&bin(0, 0, 0, 2, &[])), fin("0.00"));
        assert_eq!(decode_binary(&bin(1, 0, 0, 0, &[42])), fin("42"));
        // -12.34 = 12 × 10000^0 + 3400 × 10000^-1
        assert_eq!(
            decode_binary(&bin(2, 0, SIGN_NEG, 4, &[12, 3400])),
            fin("-12.3400")
        );
        assert_eq!(decode_binary(&bin(2, 0, 0, 2, &[12, 3400])), fin("12.34"));
        // 1e-30 = 100 × 10000^-8
        assert_eq!(
            decode_binary(&bin(1, -8, 0, 30, &[100])),
            fin("0.000000000000000000000000000001")
        );
        // 10000^2 with trailing zero digits omitted.
        assert_eq!(decode_binary(&bin(1, 2, 0, 0, &[1])), fin("100000000"));
        assert_eq!(decode_binary(&bin(1, 1, 0, 1, &[9999])), fin("99990000.0"));
        assert_eq!(
            decode_binary(&bin(0, 0, SIGN_NAN, 0, &[])),
            Ok(Numeric::NaN)
        );
        assert_eq!(
            decode_binary(&bin(0, 0, SIGN_PINF, 0, &[])),
            Ok(Numeric::PosInfinity)
        );
        assert_eq!(
            decode_binary(&bin(0, 0, SIGN_NINF, 0, &[])),
            Ok(Numeric::NegInfinity)
        );
    }

    #[test]
    fn binary_malformed() {
        assert!(decode_binary(&[]).is_err());
        assert!(decode_binary(&bin(2, 0, 0, 0, &[1])).is_err());
        assert!(decode_binary(&bin(1, 0, 0, 0, &[1, 2])).is_err());
        assert!(decode_binary(&bin(-1, 0, 0, 0, &[])).is_err());
        assert!(decode_binary(&bin(1, 0, 0, 0, &[10000])).is_err());
        assert!(decode_binary(&bin(0, 0, 0x1234, 0, &[])).is_err());
        assert!(decode_binary(&bin(0, 0, 0, 0x4000, &[])).is_err());
        // Extreme weights are fine: the text is just long.
        let long = decode_binary(&bin(1, i16::MAX, 0, 0, &[1])).unwrap();
        assert_eq!(long.to_string().len(), 1 + 4 * i16::MAX as usize);
        let tiny = decode_binary(&bin(1, i16::MIN, 0, DSCALE_MAX, &[1])).unwrap();
        assert_eq!(tiny.to_string().len(), 2 + DSCALE_MAX as usize);
        let truncated = bin(2, 0, SIGN_NEG, 4, &[12, 3400]);
        for n in 0..truncated.len() {
            assert!(decode_binary(&truncated[..n]).is_err());
        }
    }

    #[test]
    fn text() {
        for ok in [
            "0",
            "-1",
            "12.3400",
            "0.000001",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(parse_text(ok).unwrap().to_string(), ok);
        }
        for bad in [
            "", "-", ".5", "5.", "1e5", "+1", " 1", "nan", "1.2.3", "--1",
        ] {
            assert!(parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn money() {
        assert_eq!(parse_money("$0.00"), fin("0.00"));
        assert_eq!(parse_money("-$1,234.56"), fin("-1234.56"));
        assert_eq!(
            parse_money("$92,233,720,368,547,758.07"),
            fin("92233720368547758.07")
        );
        assert_eq!(parse_money("$12"), fin("12"));
        for bad in [
            "",
            "1.00",
            "$",
            "$1,23.00",
            "$1234.00",
            "1.234,56 €",
            "$1.",
            "$,100",
        ] {
            assert!(parse_money(bad).is_err(), "{bad}");
        }
    }
}
