//! Go's `time.ParseDuration`, with its error messages, for the etcd flags that
//! take a Go duration (`--grpc-keepalive-*`, `--auto-compaction-retention`):
//! an operator's "1h30m", "-5s" or "0" must mean what it means to etcd, and a
//! bad value must be refused with the words etcd would use.

use std::time::Duration;

/// A signed duration in nanoseconds, as Go's `time.Duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub i64);

impl GoDuration {
    /// The duration when above zero; etcd treats zero or less as "off".
    pub fn positive(self) -> Option<Duration> {
        u64::try_from(self.0)
            .ok()
            .filter(|n| *n > 0)
            .map(Duration::from_nanos)
    }
}

/// `time.ParseDuration`'s failure; the message is Go's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GoDurationError(String);

/// Go's `strconv.Quote` for the strings a flag can hold (printable text).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

const NANOS_PER: [(&str, u64); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("", 0),
];

/// Parses as Go's `time.ParseDuration`: an optional sign, then one or more
/// decimal numbers each with a unit ("300ms", "-1.5h", "2h45m"); "0" alone
/// needs no unit.
pub fn parse(orig: &str) -> Result<GoDuration, GoDurationError> {
    let invalid = || GoDurationError(format!("time: invalid duration {}", quote(orig)));
    let mut s = orig;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(GoDuration(0));
    }
    if s.is_empty() {
        return Err(invalid());
    }
    const LIMIT: u64 = 1 << 63;
    let mut total: u64 = 0;
    while !s.is_empty() {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 && !s.starts_with('.') {
            return Err(invalid());
        }
        let (int_part, rest) = s.split_at(digits);
        let mut whole: u64 = 0;
        for b in int_part.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .filter(|v| *v <= LIMIT)
                .ok_or_else(invalid)?;
        }
        s = rest;
        // The fraction: digits past what fits are dropped, as Go does.
        let (mut frac, mut scale) = (0u64, 1f64);
        let mut has_frac = false;
        if let Some(rest) = s.strip_prefix('.') {
            let n = rest.bytes().take_while(u8::is_ascii_digit).count();
            has_frac = n > 0;
            let mut overflow = false;
            for b in rest[..n].bytes() {
                if overflow {
                    continue;
                }
                match frac
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .filter(|v| *v <= LIMIT)
                {
                    Some(v) => {
                        frac = v;
                        scale *= 10.0;
                    }
                    None => overflow = true,
                }
            }
            s = &rest[n..];
        }
        if digits == 0 && !has_frac {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(GoDurationError(format!(
                "time: missing unit in duration {}",
                quote(orig)
            )));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let Some(&(_, per)) = NANOS_PER.iter().find(|(name, _)| *name == unit) else {
            return Err(GoDurationError(format!(
                "time: unknown unit {} in duration {}",
                quote(unit),
                quote(orig)
            )));
        };
        let mut v = whole
            .checked_mul(per)
            .filter(|v| *v <= LIMIT)
            .ok_or_else(invalid)?;
        if frac > 0 {
            v = v
                .checked_add((frac as f64 * (per as f64 / scale)) as u64)
                .filter(|v| *v <= LIMIT)
                .ok_or_else(invalid)?;
        }
        total = total
            .checked_add(v)
            .filter(|v| *v <= LIMIT)
            .ok_or_else(invalid)?;
    }
    if neg {
        // -(1<<63) is the one value whose magnitude does not fit an i64.
        return Ok(GoDuration(0i64.wrapping_sub_unsigned(total)));
    }
    i64::try_from(total).map(GoDuration).map_err(|_| invalid())
}

/// For clap: a Go duration flag, refused with Go's message.
pub fn parse_flag(s: &str) -> Result<GoDuration, String> {
    parse(s).map_err(|e| e.to_string())
}

/// For clap: a Go duration flag that must be positive, as a std Duration.
pub fn parse_positive(s: &str) -> Result<Duration, String> {
    parse_flag(s)?
        .positive()
        .ok_or_else(|| format!("duration {s:?} must be positive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> i64 {
        match parse(s) {
            Ok(d) => d.0,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    fn err(s: &str) -> String {
        match parse(s) {
            Ok(d) => panic!("{s:?} parsed as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    const S: i64 = 1_000_000_000;

    /// Cases from Go's time package tests.
    #[test]
    fn parses_what_go_parses() {
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("-0"), 0);
        assert_eq!(ok("+0"), 0);
        assert_eq!(ok("5s"), 5 * S);
        assert_eq!(ok("30s"), 30 * S);
        assert_eq!(ok("1478s"), 1478 * S);
        assert_eq!(ok("-5s"), -5 * S);
        assert_eq!(ok("+5s"), 5 * S);
        assert_eq!(ok("5.0s"), 5 * S);
        assert_eq!(ok("5.6s"), 5 * S + 600_000_000);
        assert_eq!(ok("5.s"), 5 * S);
        assert_eq!(ok(".5s"), S / 2);
        assert_eq!(ok("1.004s"), S + 4_000_000);
        assert_eq!(ok("10ns"), 10);
        assert_eq!(ok("11us"), 11_000);
        assert_eq!(ok("12µs"), 12_000);
        assert_eq!(ok("12μs"), 12_000);
        assert_eq!(ok("13ms"), 13_000_000);
        assert_eq!(ok("15m"), 15 * 60 * S);
        assert_eq!(ok("16h"), 16 * 3600 * S);
        assert_eq!(ok("3h30m"), (3 * 3600 + 30 * 60) * S);
        assert_eq!(ok("-2m3.4s"), -(2 * 60 * S + 3 * S + 400_000_000));
        assert_eq!(ok("9223372036854775807ns"), i64::MAX);
        assert_eq!(ok("-9223372036854775808ns"), i64::MIN);
        assert_eq!(
            ok("0.100000000000000000000h"),
            6 * 60 * S,
            "excess fraction digits are dropped"
        );
    }

    #[test]
    fn refuses_with_go_messages() {
        assert_eq!(err(""), r#"time: invalid duration """#);
        assert_eq!(err("3"), r#"time: missing unit in duration "3""#);
        assert_eq!(err("-1"), r#"time: missing unit in duration "-1""#);
        assert_eq!(err("s"), r#"time: invalid duration "s""#);
        assert_eq!(err("."), r#"time: invalid duration ".""#);
        assert_eq!(err("-.s"), r#"time: invalid duration "-.s""#);
        assert_eq!(err("+"), r#"time: invalid duration "+""#);
        assert_eq!(err("1d"), r#"time: unknown unit "d" in duration "1d""#);
        assert_eq!(err("abc"), r#"time: invalid duration "abc""#);
        assert_eq!(
            err("9223372036854775808ns"),
            r#"time: invalid duration "9223372036854775808ns""#
        );
    }

    #[test]
    fn zero_and_negative_are_off() {
        assert_eq!(GoDuration(0).positive(), None);
        assert_eq!(GoDuration(-1).positive(), None);
        assert_eq!(GoDuration(5 * S).positive(), Some(Duration::from_secs(5)));
    }
}
