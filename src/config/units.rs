//! Human units in the config: sizes (`"256MiB"`), durations (`"100ms"`, `"30d"`)
//! and rates (`"20Mbit/s"`). A bad value cannot be built, so code past
//! `config::validate` never re-checks them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

/// A byte count. Accepts `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`, `TB`/`TiB`
/// (decimal and binary prefixes both mean what they say) or a bare integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size as a `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// A size, duration, rate or quota that does not parse: the text and what
/// is wrong with it (the config error names the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    /// A size with a unit not in the list.
    #[error("unknown size unit {unit:?} in {value:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")]
    SizeUnit {
        /// The unit as written.
        unit: String,
        /// The whole value as written.
        value: String,
    },
    /// A negative size, or one past `u64::MAX` bytes.
    #[error("size {0:?} is out of range")]
    SizeRange(String),
    /// A bare number as a duration: seconds or milliseconds would be a guess.
    #[error("duration {0:?} needs a unit (ms, s, m, h, d, w)")]
    DurationNoUnit(String),
    /// A duration with a unit not in the list.
    #[error("unknown duration unit {unit:?} in {value:?} (use ms, s, m, h, d, w)")]
    DurationUnit {
        /// The unit as written.
        unit: String,
        /// The whole value as written.
        value: String,
    },
    /// A negative duration, or one past 10^12 seconds.
    #[error("duration {0:?} is out of range")]
    DurationRange(String),
    /// A rate without `/s`.
    #[error("rate {0:?} must end in /s, e.g. \"20Mbit/s\"")]
    RateSuffix(String),
    /// A bit rate with an unknown prefix.
    #[error("unknown bit-rate prefix in {0:?} (use bit, kbit, Mbit, Gbit)")]
    BitPrefix(String),
    /// A rate in neither bits nor bytes.
    #[error("unknown rate unit in {0:?} (use e.g. \"20Mbit/s\" or \"5MiB/s\")")]
    RateUnit(String),
    /// A rate of zero or less.
    #[error("rate {0:?} must be positive")]
    RateZero(String),
    /// A quota without the `/period`.
    #[error("quota {0:?} must be bytes per period, e.g. \"64MiB/h\"")]
    QuotaForm(String),
    /// A quota of zero bytes.
    #[error("quota {0:?} must allow some bytes")]
    QuotaZero(String),
    /// A quota over less than a second.
    #[error("quota {0:?}: the period must be at least 1s")]
    QuotaPeriod(String),
    /// A value that does not start with digits.
    #[error("{0:?} does not start with a number")]
    NoNumber(String),
    /// Digits that do not make a number (`1.2.3`).
    #[error("{0:?} has a malformed number")]
    BadNumber(String),
}

impl FromStr for ByteSize {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let (num, unit) = split_number(s)?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "ki" | "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mi" | "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gi" | "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "ti" | "tib" => 1 << 40,
            _ => return Err(BadValue::SizeUnit { unit: unit.to_owned(), value: s.to_owned() }),
        };
        let v = num * mult as f64;
        if !(0.0..=u64::MAX as f64).contains(&v) {
            return Err(BadValue::SizeRange(s.to_owned()));
        }
        Ok(ByteSize(v.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, m) in UNITS {
            if self.0 >= m && self.0 % m == 0 {
                return write!(f, "{}{}", self.0 / m, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A duration. Accepts `ms`, `s`, `m`, `h`, `d`, `w` suffixes (`"100ms"`,
/// `"1.5s"`, `"30d"`). A bare number is refused: `"30"` is ambiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let (num, unit) = split_number(s)?;
        let secs: f64 = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 7.0 * 86_400.0,
            "" => return Err(BadValue::DurationNoUnit(s.to_owned())),
            _ => return Err(BadValue::DurationUnit { unit: unit.to_owned(), value: s.to_owned() }),
        };
        let v = num * secs;
        if !(0.0..=1e12).contains(&v) {
            return Err(BadValue::DurationRange(s.to_owned()));
        }
        Ok(HumanDuration(Duration::from_secs_f64(v)))
    }
}

/// A rate in bytes per second. Accepts bit rates (`"20Mbit/s"`, `"1Gbit/s"`,
/// decimal prefixes as network teams use them) and byte rates (`"5MiB/s"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Bytes per second.
    pub bytes_per_sec: f64,
}

impl FromStr for Rate {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let body = s.trim().strip_suffix("/s").ok_or_else(|| BadValue::RateSuffix(s.to_owned()))?;
        let (num, unit) = split_number(body)?;
        let lower = unit.to_ascii_lowercase();
        let bytes_per_sec = if let Some(prefix) = lower.strip_suffix("bit") {
            let m = match prefix {
                "" => 1.0,
                "k" => 1e3,
                "m" => 1e6,
                "g" => 1e9,
                _ => return Err(BadValue::BitPrefix(s.to_owned())),
            };
            num * m / 8.0
        } else {
            ByteSize::from_str(&format!("1{unit}"))
                .map(|b| b.0 as f64 * num)
                .map_err(|_| BadValue::RateUnit(s.to_owned()))?
        };
        if bytes_per_sec <= 0.0 {
            return Err(BadValue::RateZero(s.to_owned()));
        }
        Ok(Rate { bytes_per_sec })
    }
}

/// A byte quota per period: `"64MiB/h"`, `"1MiB/10s"` (a bare unit is one of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Bytes allowed per period.
    pub bytes: u64,
    /// The period, at least 1s.
    pub period: Duration,
}

impl FromStr for Quota {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let (size, per) = s.trim().split_once('/').ok_or_else(|| BadValue::QuotaForm(s.to_owned()))?;
        let bytes = ByteSize::from_str(size)?.0;
        let per = per.trim();
        let period = if per.starts_with(|c: char| c.is_ascii_digit()) {
            HumanDuration::from_str(per)?.0
        } else {
            HumanDuration::from_str(&format!("1{per}"))?.0
        };
        if bytes == 0 {
            return Err(BadValue::QuotaZero(s.to_owned()));
        }
        if period < Duration::from_secs(1) {
            return Err(BadValue::QuotaPeriod(s.to_owned()));
        }
        Ok(Quota { bytes, period })
    }
}

fn split_number(s: &str) -> Result<(f64, &str), BadValue> {
    let t = s.trim();
    let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(t.len());
    let (n, unit) = t.split_at(end);
    if n.is_empty() {
        return Err(BadValue::NoNumber(s.to_owned()));
    }
    let n: f64 = n.replace('_', "").parse().map_err(|_| BadValue::BadNumber(s.to_owned()))?;
    Ok((n, unit.trim()))
}

macro_rules! deserialize_from_str {
    ($t:ty, $what:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$t, E> {
                        v.to_string().parse().map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

deserialize_from_str!(ByteSize, "a size such as \"256MiB\"");
deserialize_from_str!(HumanDuration, "a duration such as \"100ms\" or \"30d\"");
deserialize_from_str!(Rate, "a rate such as \"20Mbit/s\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("256MiB".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("4MiB".parse::<ByteSize>().unwrap().0, 4 << 20);
        assert_eq!("500GiB".parse::<ByteSize>().unwrap().0, 500 << 30);
        assert_eq!("1KB".parse::<ByteSize>().unwrap().0, 1000);
        assert_eq!("123".parse::<ByteSize>().unwrap().0, 123);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        let q: Quota = "64MiB/h".parse().unwrap();
        assert_eq!((q.bytes, q.period), (64 << 20, Duration::from_secs(3600)));
        let q: Quota = "1MiB/10s".parse().unwrap();
        assert_eq!((q.bytes, q.period), (1 << 20, Duration::from_secs(10)));
        assert!("64MiB".parse::<Quota>().is_err());
        assert!("0B/h".parse::<Quota>().is_err());
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
    }

    #[test]
    fn durations() {
        assert_eq!("100ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(100));
        assert_eq!("30d".parse::<HumanDuration>().unwrap().0, Duration::from_secs(30 * 86400));
        assert_eq!("1.5s".parse::<HumanDuration>().unwrap().0, Duration::from_millis(1500));
        assert!("30".parse::<HumanDuration>().is_err());
        assert!("3y".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn rates() {
        let r: Rate = "20Mbit/s".parse().unwrap();
        assert!((r.bytes_per_sec - 2.5e6).abs() < 1e-6);
        let r: Rate = "1MiB/s".parse().unwrap();
        assert!((r.bytes_per_sec - 1048576.0).abs() < 1e-6);
        assert!("20Mbit".parse::<Rate>().is_err());
    }
}
