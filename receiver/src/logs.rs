//! The receiver's log: one line per event on stderr, as text (`key=value` fields) or as JSON
//! objects, chosen by `log_format` and switched by a reload without a lock on the path of an
//! event (one atomic load). The level filter is `FLOWPACK_LOG` (`info` by default).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Whether events are written as JSON.
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets the format of the lines written from now on.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// The format in force.
pub fn format() -> LogFormat {
    if JSON.load(Ordering::Relaxed) {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

/// Installs the process's logger on stderr, writing `format`. Fails if one is installed.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    set_format(format);
    let ansi = std::io::stderr().is_terminal();
    let switch = Switch {
        // Colour codes only for a person watching, not in a log file.
        text: Plain::new(LogTime, ansi),
        // One flat object per event: {"timestamp", "level", "message", fields…, "target"}.
        json: tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_timer(LogTime),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(switch)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWPACK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

/// Writes each event in the format in force.
struct Switch {
    text: Plain<LogTime>,
    json: Format<Json, LogTime>,
}

impl<S, N> FormatEvent<S, N> for Switch
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if JSON.load(Ordering::Relaxed) {
            self.json.format_event(ctx, writer, event)
        } else {
            self.text.format_event(ctx, writer, event)
        }
    }
}

/// The text format: the very lines of tracing-subscriber's `Full` format without colours
/// (`2026-11-22T14:50:00.123456Z  INFO target: message key=value …`), written by a visitor of
/// our own instead of the default one. The default visitor passes every field name and `=`
/// through a colour style even when colours are off, which was about 5,000 of the 12,000
/// instructions of the line logged for every request. Events inside a span, and every event
/// when colours are on, go to the `Full` format itself (the receiver opens no spans).
struct Plain<T> {
    timer: T,
    full: Format<Full, T>,
}

impl<T: FormatTime + Clone> Plain<T> {
    fn new(timer: T, ansi: bool) -> Plain<T> {
        Plain {
            full: tracing_subscriber::fmt::format()
                .with_timer(timer.clone())
                .with_ansi(ansi),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for Plain<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        // A record of the `log` crate carries its real level and target in fields that only
        // the `Full` format reads back.
        if writer.has_ansi_escapes()
            || ctx.event_scope().is_some()
            || meta.fields().field("log.target").is_some()
        {
            return self.full.format_event(ctx, writer, event);
        }
        self.timer.format_time(&mut writer)?;
        let level = match *meta.level() {
            tracing::Level::TRACE => "TRACE",
            tracing::Level::DEBUG => "DEBUG",
            tracing::Level::INFO => " INFO",
            tracing::Level::WARN => " WARN",
            tracing::Level::ERROR => "ERROR",
        };
        writer.write_char(' ')?;
        writer.write_str(level)?;
        writer.write_char(' ')?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let sanitize = writer.sanitizes_ansi_escapes();
        let mut fields = PlainFields {
            writer: writer.by_ref(),
            sanitize,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// Writes an event's fields as the default visitor does with colours off: the message as is,
/// then `name=value`, separated by single spaces; `&str` values quoted as `Debug` quotes
/// them, everything else as its `Debug` form. Control characters in the message and in errors
/// are escaped as the default visitor escapes them.
struct PlainFields<'w> {
    writer: Writer<'w>,
    sanitize: bool,
    first: bool,
    result: std::fmt::Result,
}

impl PlainFields<'_> {
    /// Writes the separator and `name=`, and says whether to go on (`log.` fields are not
    /// written: the `Full` format reads them as the record's metadata).
    fn start(&mut self, name: &str) -> bool {
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(' ')?;
            }
            if name != "message" {
                self.writer.write_str(name)?;
                self.writer.write_char('=')?;
            }
            Ok(())
        })();
        self.result.is_ok()
    }

    /// Writes `value`'s `Debug` form, escaped when `escape` and the writer asks for it.
    fn debug(&mut self, value: &dyn std::fmt::Debug, escape: bool) {
        self.result = if escape && self.sanitize {
            write!(
                Escaping {
                    inner: &mut self.writer
                },
                "{value:?}"
            )
        } else {
            write!(self.writer, "{value:?}")
        };
    }
}

impl tracing::field::Visit for PlainFields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let message = field.name() == "message";
        if !self.start(field.name()) {
            return;
        }
        self.result = if message {
            if self.sanitize {
                Escaping {
                    inner: &mut self.writer,
                }
                .write_str(value)
            } else {
                self.writer.write_str(value)
            }
        } else if value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            // What `Debug` writes for a string of plain printable ASCII.
            self.writer.write_char('"').and_then(|()| {
                self.writer.write_str(value)?;
                self.writer.write_char('"')
            })
        } else {
            write!(self.writer, "{value:?}")
        };
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if self.start(field.name()) {
            self.result = self.writer.write_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if self.start(field.name()) {
            self.result = self.writer.write_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if self.start(field.name()) {
            self.result = self.writer.write_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        if !self.start(field.name()) {
            return;
        }
        let sanitize = self.sanitize;
        let shown = EscapedDisplay(value, sanitize);
        self.result = match value.source() {
            Some(source) => {
                let name = field.name();
                write!(
                    self.writer,
                    "{shown} {name}.sources={:?}",
                    SourceList(source, sanitize)
                )
            }
            None => write!(self.writer, "{shown}"),
        };
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let message = field.name() == "message";
        if self.start(field.name()) {
            self.debug(value, message);
        }
    }
}

/// Passes text on with the control characters a terminal could act on escaped (ESC, BEL, BS,
/// FF, DEL as `\x..`, C1 controls as `\u{..}`), as tracing-subscriber escapes them.
struct Escaping<'a, W: std::fmt::Write> {
    inner: &'a mut W,
}

impl<W: std::fmt::Write> std::fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(|c: char| {
            matches!(
                c,
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
            )
        }) {
            self.inner.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\x1b' => self.inner.write_str("\\x1b")?,
                '\x07' => self.inner.write_str("\\x07")?,
                '\x08' => self.inner.write_str("\\x08")?,
                '\x0c' => self.inner.write_str("\\x0c")?,
                '\x7f' => self.inner.write_str("\\x7f")?,
                c => write!(self.inner, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.inner.write_str(rest)
    }
}

/// An error's `Display`, escaped as [`Escaping`] does when the flag is set.
struct EscapedDisplay<'e>(&'e (dyn std::error::Error + 'static), bool);

impl std::fmt::Display for EscapedDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.1 {
            write!(Escaping { inner: f }, "{}", self.0)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl std::fmt::Debug for EscapedDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// An error's chain of sources, as `[first, second, …]`.
struct SourceList<'e>(&'e (dyn std::error::Error + 'static), bool);

impl std::fmt::Debug for SourceList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(e) = next {
            list.entry(&EscapedDisplay(e, self.1));
            next = e.source();
        }
        list.finish()
    }
}

/// The log's timestamps: the text of tracing-subscriber's default timer
/// (`2026-11-22T14:50:00.123456Z`: UTC, microseconds), made with one write instead of seven
/// formatting calls, which were a fifth of the cost of the line logged for every request.
#[derive(Debug, Clone, Copy)]
struct LogTime;

impl tracing_subscriber::fmt::time::FormatTime for LogTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match utc_micros(time::OffsetDateTime::now_utc()) {
            Some(text) => w.write_str(std::str::from_utf8(&text).map_err(|_| std::fmt::Error)?),
            // Years of five digits or before year 0: the default timer's own form.
            None => tracing_subscriber::fmt::time::SystemTime.format_time(w),
        }
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), or `None` outside the years 0 to 9999.
fn utc_micros(t: time::OffsetDateTime) -> Option<[u8; 27]> {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    for (range, value) in [
        (0..4, year),
        (5..7, u32::from(u8::from(t.month()))),
        (8..10, u32::from(t.day())),
        (11..13, u32::from(t.hour())),
        (14..16, u32::from(t.minute())),
        (17..19, u32::from(t.second())),
        (20..26, t.microsecond()),
    ] {
        let mut v = value;
        for digit in text[range].iter_mut().rev() {
            // `v % 10` is a digit.
            *digit = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timer that always writes the same time, so that two formats' lines can be compared.
    #[derive(Clone)]
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
            w.write_str("2026-12-01T06:00:00.123456Z")
        }
    }

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An error with a cause.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("reading \x1b[31mthe key")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Every kind of event and field the receiver logs, and a few it might.
    fn events() {
        tracing::info!(
            method = %hyper::Method::GET,
            path = %"/v1/credentials/a/b",
            status = 200u16,
            principal = "admin",
            ms = 3u64,
            request_id = %"0f8fad5bd9cb469f",
            client = %std::net::SocketAddr::from(([127, 0, 0, 1], 41266)),
            route = %"/v1/credentials/{path}",
            "request"
        );
        tracing::warn!(
            name = "quote\"d \\ é\u{85}\n",
            ascii = "say \"hi\" \\ there",
            n = -5i64,
            on = true,
            off = false,
            ratio = 1.5f64,
            r#type = "password",
            "a message with \x1b[31m colour, \x07\x08\x0c\x7f and \u{9b} in it"
        );
        tracing::error!(error = %"disk full", "writing an audit row failed");
        let outer = Outer(std::io::Error::other("denied\u{80}"));
        tracing::error!(error = &outer as &dyn std::error::Error, "reload failed");
        let plain = std::io::Error::other("plain");
        tracing::error!(error = &plain as &dyn std::error::Error, "no source");
        tracing::info!(message = "a message given as a \x1b field", extra = 1u64);
        tracing::debug!("only a message, {} of it", 1);
        tracing::trace!(list = ?vec!["a", "b"], "debug values");
        tracing::info!(log.other = 1u64, after = "x", "a field named log.*");
        tracing::info!(target: "elsewhere", empty = "", "");
    }

    /// What `format` writes for [`events`].
    fn written<E>(format: E) -> String
    where
        E: FormatEvent<
                tracing_subscriber::Registry,
                tracing_subscriber::fmt::format::DefaultFields,
            > + Send
            + Sync
            + 'static,
    {
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .event_format(format)
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        let bytes = capture
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn plain_lines_are_the_full_formats_lines() {
        let full = written(
            tracing_subscriber::fmt::format()
                .with_timer(Fixed)
                .with_ansi(false),
        );
        let plain = written(Plain::new(Fixed, false));
        assert_eq!(full.lines().count(), 10, "{full}");
        assert!(
            full.contains(" INFO flowpack_receiver::logs::tests: request method=GET path=/v1/credentials/a/b status=200 principal=\"admin\""),
            "{full}"
        );
        assert!(full.contains("\\x1b[31m"), "escaped: {full}");
        for (f, p) in full.lines().zip(plain.lines()) {
            assert_eq!(p, f);
        }
        assert_eq!(plain, full);
    }

    #[test]
    fn log_timestamps_have_the_default_timers_form() {
        let form = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        for (secs, nanos) in [
            (0, 0),
            (951_782_400, 1_000),           // 2000-02-29
            (1_700_000_000, 123_456_789),   // sub-microseconds are cut, not rounded
            (1_795_351_800, 999_999_999),   // 2026-11-22T14:50:00.999999Z
            (253_402_300_799, 999_999_000), // 9999-12-31T23:59:59.999999Z
            (-62_167_219_200, 0),           // 0000-01-01T00:00:00.000000Z
        ] {
            let t = time::OffsetDateTime::from_unix_timestamp(secs)
                .unwrap_or_else(|e| panic!("{e}"))
                + time::Duration::nanoseconds(nanos);
            let ours = utc_micros(t).unwrap_or_else(|| panic!("{t} has a four-digit year"));
            let expected = t.format(&form).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                std::str::from_utf8(&ours).ok(),
                Some(expected.as_str()),
                "{t}"
            );
        }
        // The day before year 0 (`time` holds no five-digit years).
        let year_minus_1 = time::OffsetDateTime::from_unix_timestamp(-62_167_219_201)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(utc_micros(year_minus_1), None);
    }
}
