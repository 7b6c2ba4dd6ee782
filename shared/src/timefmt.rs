//! Timestamps as bundles write them: RFC 3339, UTC, milliseconds (`2026-11-22T12:00:00.000Z`),
//! and the durations both command lines take (`--expires 7d`, `--timeout 90s`), read by `humantime`
//! within bounds.

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

/// Why a duration was refused. The messages do not repeat the value: the caller (clap, for
/// `--expires` and `--timeout`) names the option and shows the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration: the reason `humantime` gives, or whitespace around or inside it.
    #[error("{0}; expected a number and a unit, e.g. 90s, 30m, 12h, 7d or 2w")]
    Syntax(String),
    /// A minus sign: durations count forward.
    #[error("must not be negative")]
    Negative,
    /// Zero.
    #[error("must be more than zero")]
    Zero,
    /// Shorter than the least allowed, which is named (`1m`).
    #[error("must be at least {0}")]
    TooShort(String),
    /// Longer than the most allowed, which is named (`3650d`); also a number too large for any
    /// integer type.
    #[error("must be at most {0}")]
    TooLong(String),
}

/// Parses a duration for `--expires`: a number and a unit as `humantime` reads them (`30m`,
/// `12h`, `7d`, `2w`, `1h30m`, `1.5h`; units from `s` to `y`, see [`humantime::parse_duration`]),
/// from 1m to [`MAX_DURATION_DAYS`] days. Never panics, whatever the input.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let d = parse_duration_within(
        s,
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(MAX_DURATION_DAYS * 24 * 60 * 60),
    )?;
    // Within ten years: the conversion cannot fail.
    Duration::try_from(d).map_err(|_| DurationError::TooLong(format!("{MAX_DURATION_DAYS}d")))
}

/// Parses a duration as [`parse_duration`] does, within `min..=max` (each named in the error
/// in its largest whole unit, e.g. `1m`, `1h`, `3650d`).
///
/// Stricter than `humantime` alone: no whitespace anywhere (a duration is one word on a command
/// line), no sign, not zero.
pub fn parse_duration_within(
    s: &str,
    min: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration, DurationError> {
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if s.is_empty() {
        return Err(DurationError::Syntax("empty".into()));
    }
    if s.chars().any(char::is_whitespace) {
        return Err(DurationError::Syntax("a space in it".into()));
    }
    let d = match humantime::parse_duration(s) {
        Ok(d) => d,
        Err(humantime::DurationError::NumberOverflow) => {
            return Err(DurationError::TooLong(short(max)));
        }
        Err(e) => return Err(DurationError::Syntax(e.to_string())),
    };
    if d.is_zero() {
        return Err(DurationError::Zero);
    }
    if d < min {
        return Err(DurationError::TooShort(short(min)));
    }
    if d > max {
        return Err(DurationError::TooLong(short(max)));
    }
    Ok(d)
}

/// `d` in its largest whole unit among d, h, m and s (`3650d`, `1h`, `90s`).
fn short(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
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
        assert_eq!(parse_duration("1w"), Ok(Duration::days(7)));
        assert_eq!(parse_duration("2weeks"), Ok(Duration::days(14)));
        assert_eq!(parse_duration("1m"), Ok(Duration::minutes(1)));
        assert_eq!(parse_duration("60s"), Ok(Duration::minutes(1)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::minutes(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::minutes(90)));
        assert_eq!(parse_duration("007d"), Ok(Duration::days(7)));
        assert_eq!(parse_duration("3650d"), Ok(Duration::days(3650)));
        assert_eq!(parse_duration("87600h"), Ok(Duration::days(3650)));
        assert_eq!(parse_duration("5256000m"), Ok(Duration::days(3650)));
        assert_eq!(parse_duration("1y"), Ok(Duration::hours(8766)));
    }

    #[test]
    fn bad_durations_are_errors_not_panics() {
        use DurationError::*;
        let syntax = |s: &str| match parse_duration(s) {
            Err(Syntax(_)) => true,
            other => panic!("{s:?}: {other:?}"),
        };
        for s in [
            "", "7", "d", "m", "+1d", " 1d", "1 d", "1h 30m", "1e9d", "١d", "7д", "7x", "7D",
            "7d ", "7\u{1b}", "7\td",
        ] {
            assert!(syntax(s));
        }
        let too_long = || TooLong("3650d".into());
        let cases: &[(&str, DurationError)] = &[
            ("-1d", Negative),
            ("-0m", Negative),
            ("0d", Zero),
            ("0m", Zero),
            ("000h", Zero),
            ("0.0h", Zero),
            ("30s", TooShort("1m".into())),
            ("59s", TooShort("1m".into())),
            ("3651d", too_long()),
            ("87601h", too_long()),
            ("5256001m", too_long()),
            ("522w", too_long()),
            ("11y", too_long()),
            ("9999999999999999d", too_long()),
            ("18446744073709551615m", too_long()),
            ("18446744073709551616h", too_long()),
            ("99999999999999999999999999999999999999999d", too_long()),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn errors_name_the_bounds_and_say_how_to_write_one() {
        let text = |s: &str| {
            parse_duration(s)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(text("30s"), "must be at least 1m");
        assert_eq!(text("3651d"), "must be at most 3650d");
        assert!(
            text("7x").contains("e.g. 90s, 30m, 12h, 7d or 2w"),
            "{}",
            text("7x")
        );
        let within = |s: &str| {
            parse_duration_within(
                s,
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(3600),
            )
        };
        assert_eq!(within("90s"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(within("2h"), Err(DurationError::TooLong("1h".into())));
        assert_eq!(within("500ms"), Err(DurationError::TooShort("1s".into())));
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
        fn no_string_makes_parse_duration_panic(s in "\\PC*|[-+]?[0-9]{0,30}(\\.[0-9]{0,5})?[smhdwyMд\u{0}-\u{7f}]{0,3}") {
            if let Ok(d) = parse_duration(&s) {
                proptest::prop_assert!(d >= Duration::minutes(1));
                proptest::prop_assert!(d <= Duration::days(3650));
            }
        }

        #[test]
        fn every_number_in_range_parses_to_its_duration(n in 1u64..=5_256_000, unit in 0usize..4) {
            let (suffix, secs) = [("m", 60u64), ("h", 3600), ("d", 86400), ("w", 7 * 86400)][unit];
            let within = n.saturating_mul(secs) <= MAX_DURATION_DAYS * 86400;
            let got = parse_duration(&format!("{n}{suffix}"));
            if within {
                proptest::prop_assert_eq!(got, Ok(Duration::seconds(i64::try_from(n * secs).unwrap_or(0))));
            } else {
                proptest::prop_assert_eq!(got, Err(DurationError::TooLong("3650d".into())));
            }
        }
    }
}
