//! Times on the command line: RFC 3339 and the shorter forms people type.
//!
//! - `2026-11-30T14:05:00Z`, `2026-11-30T14:05:00.250+01:00` (RFC 3339)
//! - `2026-11-30T14:05`, `2026-11-30 14:05`, `2026-11-30T14` (UTC)
//! - `2026-11-30` (midnight UTC)
//! - `-15m`, `-2h`, `-30s`, `-1d`, `-500ms` (before now), `now`

/// A text that is none of the forms above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a time: use RFC 3339 (2026-11-30T14:05:00Z), 2026-11-30T14:05 (UTC), 2026-11-30, or -15m / -2h / -1d"
)]
pub struct NotATime(pub String);

/// Milliseconds since the epoch for `s`; `now_ms` anchors relative forms.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, NotATime> {
    let t = s.trim();
    if t == "now" {
        return Ok(now_ms);
    }
    if let Some(rel) = t.strip_prefix('-') {
        return relative(rel).map(|d| now_ms - d).ok_or_else(|| bad(s));
    }
    absolute(t).ok_or_else(|| bad(s))
}

fn bad(s: &str) -> NotATime {
    NotATime(s.to_owned())
}

fn relative(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

fn num(s: &str, at: usize, len: usize) -> Option<i64> {
    let part = s.get(at..at + len)?;
    part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
}

fn absolute(s: &str) -> Option<i64> {
    let (y, mo, d) = (num(s, 0, 4)?, num(s, 5, 2)?, num(s, 8, 2)?);
    if s.as_bytes().get(4) != Some(&b'-') || s.as_bytes().get(7) != Some(&b'-') {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let day_ms = days_from_civil(y, mo as u32, d as u32) * 86_400_000;
    let rest = &s[10..];
    if rest.is_empty() {
        return Some(day_ms);
    }
    let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix('t')).or_else(|| rest.strip_prefix(' '))?;
    let h = num(rest, 0, 2)?;
    let (mut mi, mut sec, mut frac_ms) = (0, 0, 0);
    let mut at = 2;
    if rest.as_bytes().get(2) == Some(&b':') {
        mi = num(rest, 3, 2)?;
        at = 5;
        if rest.as_bytes().get(5) == Some(&b':') {
            sec = num(rest, 6, 2)?;
            at = 8;
            if rest.as_bytes().get(8) == Some(&b'.') {
                let digits: String = rest[9..].chars().take_while(|c| c.is_ascii_digit()).collect();
                if digits.is_empty() {
                    return None;
                }
                let ms3: String = digits.chars().chain("000".chars()).take(3).collect();
                frac_ms = ms3.parse().ok()?;
                at = 9 + digits.len();
            }
        }
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let offset_ms = match &rest[at..] {
        "" | "Z" | "z" => 0,
        tz => {
            let sign = match tz.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if tz.len() != 6 || tz.as_bytes()[3] != b':' {
                return None;
            }
            sign * (num(tz, 1, 2)? * 3_600_000 + num(tz, 4, 2)? * 60_000)
        }
    };
    Some(day_ms + h * 3_600_000 + mi * 60_000 + sec * 1_000 + frac_ms - offset_ms)
}

/// Howard Hinnant's civil-to-days algorithm (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_796_565_900_000; // 2026-12-06T14:05:00Z

    #[test]
    fn forms_people_type() {
        assert_eq!(parse_time("2026-12-06T14:05:00Z", 0), Ok(T));
        assert_eq!(parse_time("2026-12-06T14:05", 0), Ok(T));
        assert_eq!(parse_time("2026-12-06 14:05", 0), Ok(T));
        assert_eq!(parse_time("2026-12-06T15:05:00+01:00", 0), Ok(T));
        assert_eq!(parse_time("2026-12-06T14:05:00.25Z", 0), Ok(T + 250));
        assert_eq!(parse_time("2026-12-06T14", 0), Ok(T - 5 * 60_000));
        assert_eq!(parse_time("2026-12-06", 0), Ok(T - (14 * 60 + 5) * 60_000));
        assert_eq!(parse_time("1970-01-01", 0), Ok(0));
        assert_eq!(parse_time("2000-03-01T00:00Z", 0), Ok(951_868_800_000));
        assert_eq!(parse_time("-15m", T), Ok(T - 900_000));
        assert_eq!(parse_time("-2h", T), Ok(T - 7_200_000));
        assert_eq!(parse_time("-1d", T), Ok(T - 86_400_000));
        assert_eq!(parse_time("now", T), Ok(T));
        for bad in ["", "yesterday", "2026-13-01", "2026-12-06T25:00", "-15x", "2026-12-06T14:05+1", "-m"] {
            assert!(parse_time(bad, T).is_err(), "{bad:?}");
        }
    }
}
