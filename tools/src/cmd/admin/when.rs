//! Instants on the command line and in tables: RFC 3339 in UTC.

use anyhow::{Result, bail};
use gridback_proto::now_unix_ms;
use gridback_proto::units::parse_duration;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, Time};

/// Which way a bare duration points.
#[derive(Debug, Clone, Copy)]
pub enum Relative {
    /// `10m` means ten minutes ago (for `--since`).
    Ago,
    /// `30d` means thirty days from now (for `--expires`).
    FromNow,
}

/// Parse an instant: RFC 3339 (`2026-11-25T10:00:00Z`), a date (`2026-11-25`, midnight
/// UTC) or a duration relative to now. Returns ms since the Unix epoch.
pub fn parse_instant(s: &str, rel: Relative) -> Result<u64> {
    let t = s.trim();
    if let Ok(dt) = OffsetDateTime::parse(t, &Rfc3339) {
        return to_ms(dt);
    }
    if let Some(d) = parse_date(t) {
        return to_ms(d.with_time(Time::MIDNIGHT).assume_utc());
    }
    if let Ok(d) = parse_duration(t) {
        let ms = d.as_millis() as u64;
        let now = now_unix_ms();
        return Ok(match rel {
            Relative::Ago => now.saturating_sub(ms),
            Relative::FromNow => now.saturating_add(ms),
        });
    }
    bail!(
        "{s:?} is not a time: use RFC 3339 (2026-11-25T10:00:00Z), a date (2026-11-25) or a \
         duration ({})",
        match rel {
            Relative::Ago => "10m, 2h, 1d ago",
            Relative::FromNow => "30d, 12h from now",
        }
    )
}

fn to_ms(dt: OffsetDateTime) -> Result<u64> {
    let ms = dt.unix_timestamp_nanos() / 1_000_000;
    if ms < 0 {
        bail!("times before 1970 are not supported");
    }
    Ok(ms as u64)
}

/// RFC 3339 in UTC, to the second (`-` for zero).
pub fn format_instant(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `YYYY-MM-DD`.
fn parse_date(s: &str) -> Option<Date> {
    let mut it = s.splitn(3, '-');
    let y: i32 = it.next()?.parse().ok()?;
    let m: u8 = it.next()?.parse().ok()?;
    let d: u8 = it.next()?.parse().ok()?;
    Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            parse_instant("2026-11-25T10:00:00Z", Relative::Ago).unwrap(),
            1_795_600_800_000
        );
        assert_eq!(
            parse_instant("2026-11-25", Relative::Ago).unwrap(),
            1_795_564_800_000
        );
        let ago = parse_instant("10m", Relative::Ago).unwrap();
        let now = now_unix_ms();
        assert!(now - ago >= 600_000 && now - ago < 660_000);
        assert!(parse_instant("2d", Relative::FromNow).unwrap() > now);
        assert!(parse_instant("yesterday", Relative::Ago).is_err());
        assert_eq!(format_instant(1_795_600_800_000), "2026-11-25T10:00:00Z");
    }
}
