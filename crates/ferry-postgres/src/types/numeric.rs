//! `numeric`'s and `money`'s text output. (Binary `numeric` is read and written in
//! `ferry_core::canonical`.)

use ferry_core::Numeric;

use super::DecodeError;

const WHAT: &str = "numeric";

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

    fn fin(s: &str) -> Result<Numeric, DecodeError> {
        Ok(Numeric::Finite(s.to_owned()))
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
