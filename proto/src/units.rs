//! Sizes, rates and durations written for humans: `64MiB`, `2GiB`, `5MB/s`, `30s`, `1h`.
//! One parser for every config file and flag.

/// Error for an unparsable size or duration.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse {input:?} as a {what} (examples: {examples})")]
pub struct UnitError {
    input: String,
    what: &'static str,
    examples: &'static str,
}

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..end].parse().ok()?;
    Some((n, s[end..].trim()))
}

/// Parse a byte size: a plain number of bytes, or with a unit `B`, `KB`, `MB`, `GB`, `TB`
/// (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024). Case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError {
        input: s.to_string(),
        what: "size",
        examples: "4096, 64MiB, 2GB",
    };
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(err());
    }
    Ok(v.round() as u64)
}

/// Parse a rate in bytes per second: a size followed by `/s` (`5MB/s`), or a bare size.
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    parse_size(t).map_err(|_| UnitError {
        input: s.to_string(),
        what: "rate",
        examples: "5MB/s, 100MiB/s",
    })
}

/// Parse a duration: a number with `ms`, `s`, `m`, `h` or `d`. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, UnitError> {
    let err = || UnitError {
        input: s.to_string(),
        what: "duration",
        examples: "500ms, 30s, 5m, 1h",
    };
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(err()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(err());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Format a byte count for people (`1.5 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Serde adapter for durations in config files: read with [`parse_duration`], written as the
/// shortest of `"15m"`, `"10s"` or `"250ms"`. Use as `#[serde(with = "gridback_proto::units::human_duration")]`.
pub mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Write a duration for people.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        let text = if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        s.serialize_str(&text)
    }

    /// Read a duration written for people.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_durations() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("50MB").unwrap(), 50_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5 KiB").unwrap(), 1536);
        assert!(parse_size("12 bananas").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_rate("5MB/s").unwrap(), 5_000_000);
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_size(3 << 30), "3.0 GiB");
    }
}
