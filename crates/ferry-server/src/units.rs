//! Durations and sizes as the `ferry` binary's flags take them, in PostgreSQL's units:
//! `500ms`, `30s`, `2min`, `1h`, `1d` (a bare number is seconds); `8kB`, `1MB`, `1GB` (a bare
//! number is bytes; a kB is 1024 bytes, as in PostgreSQL).

use std::time::Duration;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = split(s);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration such as 500ms, 30s, 2min or 1h"))?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "unknown unit \"{unit}\" in \"{s}\": use ms, s, min, h or d"
            ))
        }
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{s}\" is too long"))
}

pub fn parse_size(s: &str) -> Result<usize, String> {
    let (number, unit) = split(s);
    let n: usize = number
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size such as 8kB or 1MB"))?;
    let factor: usize = match unit {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit \"{unit}\" in \"{s}\": use B, kB, MB or GB"
            ))
        }
    };
    n.checked_mul(factor)
        .filter(|n| *n < 1 << 30)
        .ok_or_else(|| format!("\"{s}\" is larger than PostgreSQL's 1GB message limit"))
}

fn split(s: &str) -> (&str, &str) {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (&s[..at], s[at..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("1x").is_err() && parse_duration("s").is_err());
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_size("8kB"), Ok(8192));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("2GB").is_err() && parse_size("1mb").is_err());
    }
}
