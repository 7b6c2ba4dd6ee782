//! Timestamps as bundles write them: RFC 3339, UTC, milliseconds (`2026-11-22T12:00:00.000Z`).

use std::fmt;

use time::{
    Duration, OffsetDateTime, UtcOffset, format_description::FormatItem, macros::format_description,
};

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A UTC instant with millisecond precision.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Now, cut to milliseconds.
    pub fn now() -> Timestamp {
        Timestamp::from_datetime(OffsetDateTime::now_utc())
    }

    /// Wraps a date-time, converted to UTC and cut to milliseconds.
    pub fn from_datetime(t: OffsetDateTime) -> Timestamp {
        let t = t.to_offset(UtcOffset::UTC);
        let ms = t.millisecond();
        Timestamp(t.replace_nanosecond(u32::from(ms) * 1_000_000).unwrap_or(t))
    }

    /// Parses RFC 3339 in UTC (`Z`).
    pub fn parse(s: &str) -> Option<Timestamp> {
        if !s.ends_with('Z') {
            return None;
        }
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(Timestamp::from_datetime)
    }

    /// The instant.
    pub fn datetime(self) -> OffsetDateTime {
        self.0
    }

    /// This instant plus `d`.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d))
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        (self.0.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// From milliseconds since the Unix epoch.
    pub fn from_unix_millis(ms: i64) -> Option<Timestamp> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .map(Timestamp)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.format(FORMAT) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(
                "expected an RFC 3339 UTC timestamp such as 2026-11-22T12:00:00.000Z",
            )
        })
    }
}

/// Parses a duration such as `30m`, `12h` or `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = num.parse().ok().filter(|n| *n > 0)?;
    match unit {
        "s" => Some(Duration::seconds(n)),
        "m" => Some(Duration::minutes(n)),
        "h" => Some(Duration::hours(n)),
        "d" => Some(Duration::days(n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_and_round_trips() {
        let t = Timestamp::parse("2026-11-22T12:00:00.123456Z").unwrap_or_else(Timestamp::now);
        assert_eq!(t.to_string(), "2026-11-22T12:00:00.123Z");
        assert_eq!(Timestamp::parse(&t.to_string()), Some(t));
        assert_eq!(Timestamp::parse("2026-11-22T12:00:00.000+01:00"), None);
        assert_eq!(Timestamp::from_unix_millis(t.unix_millis()), Some(t));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Some(Duration::minutes(30)));
        assert_eq!(parse_duration("7d"), Some(Duration::days(7)));
        for bad in ["", "d", "0d", "-1d", "7w", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
