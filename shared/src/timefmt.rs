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

    /// This instant plus `d`, or `None` past the last instant a bundle can hold
    /// (9999-12-31T23:59:59.999Z: RFC 3339 has four-digit years).
    pub fn checked_plus(self, d: Duration) -> Option<Timestamp> {
        let t = self.0.checked_add(d)?;
        (t.year() <= 9999).then(|| Timestamp::from_datetime(t))
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

/// The longest duration [`parse_duration`] accepts, in days (ten years).
pub const MAX_DURATION_DAYS: u64 = 3650;

/// Why [`parse_duration`] refused a value. The messages do not repeat the value: the caller
/// (clap, for `--expires`) names the option and shows the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a whole number of ASCII digits followed by a unit.
    #[error("expected a whole number and a unit m, h or d, e.g. 30m, 12h or 7d")]
    Syntax,
    /// The last character is not one of the units.
    #[error("unknown unit {0:?}: use m (minutes), h (hours) or d (days), e.g. 30m, 12h or 7d")]
    Unit(char),
    /// The number is zero.
    #[error("must be at least 1m")]
    Zero,
    /// Longer than [`MAX_DURATION_DAYS`] (also a number too large for any integer type).
    #[error("must be at most {MAX_DURATION_DAYS}d (ten years)")]
    TooLong,
}

/// Parses a duration: a whole number (ASCII digits only: no sign, no fraction, no exponent,
/// no spaces) followed by one unit, `m` (minutes), `h` (hours) or `d` (days), as in `30m`,
/// `12h` or `7d`; from 1m to [`MAX_DURATION_DAYS`] days. Never panics, whatever the input.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let unit = s.chars().next_back().ok_or(DurationError::Syntax)?;
    let seconds_per_unit: u64 = match unit {
        'm' => 60,
        'h' => 60 * 60,
        'd' => 24 * 60 * 60,
        '0'..='9' => return Err(DurationError::Syntax),
        other => return Err(DurationError::Unit(other)),
    };
    // `unit` is ASCII here, so this cut is on a character boundary.
    let digits = &s[..s.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DurationError::Syntax);
    }
    // Digits only: the one way `parse` can fail is a number past `u64::MAX`.
    let n: u64 = digits.parse().map_err(|_| DurationError::TooLong)?;
    if n == 0 {
        return Err(DurationError::Zero);
    }
    let max_seconds = MAX_DURATION_DAYS * 24 * 60 * 60;
    let seconds = n
        .checked_mul(seconds_per_unit)
        .filter(|s| *s <= max_seconds)
        .ok_or(DurationError::TooLong)?;
    let seconds = i64::try_from(seconds).map_err(|_| DurationError::TooLong)?;
    Ok(Duration::seconds(seconds))
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
        assert_eq!(parse_duration("30m"), Ok(Duration::minutes(30)));
        assert_eq!(parse_duration("12h"), Ok(Duration::hours(12)));
        assert_eq!(parse_duration("7d"), Ok(Duration::days(7)));
        assert_eq!(parse_duration("1m"), Ok(Duration::minutes(1)));
        assert_eq!(parse_duration("007d"), Ok(Duration::days(7)));
        assert_eq!(parse_duration("3650d"), Ok(Duration::days(3650)));
        assert_eq!(parse_duration("87600h"), Ok(Duration::days(3650)));
        assert_eq!(parse_duration("5256000m"), Ok(Duration::days(3650)));
    }

    #[test]
    fn bad_durations_are_errors_not_panics() {
        use DurationError::*;
        let cases: &[(&str, DurationError)] = &[
            ("", Syntax),
            ("7", Syntax),
            ("d", Syntax),
            ("m", Syntax),
            ("-1d", Syntax),
            ("+1d", Syntax),
            (" 1d", Syntax),
            ("1 d", Syntax),
            ("1.5h", Syntax),
            ("1e9d", Syntax),
            ("١d", Syntax),
            ("0d", Zero),
            ("0m", Zero),
            ("000h", Zero),
            ("7д", Unit('д')),
            ("7w", Unit('w')),
            ("30s", Unit('s')),
            ("7D", Unit('D')),
            ("7d ", Unit(' ')),
            ("7\u{1b}", Unit('\u{1b}')),
            ("3651d", TooLong),
            ("87601h", TooLong),
            ("5256001m", TooLong),
            ("9999999999999999d", TooLong),
            ("18446744073709551615m", TooLong),
            ("18446744073709551616h", TooLong),
            ("99999999999999999999999999999999999999999d", TooLong),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn the_longest_duration_fits_a_timestamp() {
        let now = Timestamp::now();
        let max = parse_duration(&format!("{MAX_DURATION_DAYS}d")).unwrap_or(Duration::ZERO);
        assert!(now.checked_plus(max).is_some());
        let last = Timestamp::parse("9999-12-31T23:59:59.999Z").unwrap_or(now);
        assert_eq!(last.checked_plus(Duration::milliseconds(1)), None);
        assert_eq!(last.checked_plus(Duration::ZERO), Some(last));
    }

    proptest::proptest! {
        #[test]
        fn no_string_makes_parse_duration_panic(s in "\\PC*|[0-9]{0,30}[mhd\u{0}-\u{7f}д]?") {
            if let Ok(d) = parse_duration(&s) {
                proptest::prop_assert!(d >= Duration::minutes(1));
                proptest::prop_assert!(d <= Duration::days(3650));
            }
        }

        #[test]
        fn every_number_in_range_parses_to_its_duration(n in 1u64..=5_256_000, unit in 0usize..3) {
            let (suffix, secs) = [("m", 60u64), ("h", 3600), ("d", 86400)][unit];
            let within = n.saturating_mul(secs) <= MAX_DURATION_DAYS * 86400;
            let got = parse_duration(&format!("{n}{suffix}"));
            if within {
                proptest::prop_assert_eq!(got, Ok(Duration::seconds(i64::try_from(n * secs).unwrap_or(0))));
            } else {
                proptest::prop_assert_eq!(got, Err(DurationError::TooLong));
            }
        }
    }
}
