//! Showing untrusted text on a terminal. A bundle's descriptions, environment, file paths and
//! names, and a project's file names, are written by someone else: printed raw, an escape
//! sequence could move the cursor, erase or recolour a line, and a CR, LF or line separator
//! could forge a line such as "signature verified". Everything the packager prints that it did
//! not write itself goes through [`Escaped`] (human output) or [`json_safe`] (`--json`).
//!
//! Escaped, as `\u{…}` with the code point in hex: control characters (C0, DEL, C1) and the
//! invisible format characters that reorder or hide text (bidi embeddings, overrides and
//! isolates such as U+202E, the Arabic letter mark, zero-width characters, the line and
//! paragraph separators U+2028/U+2029, the byte order mark, interlinear annotations).
//! Backslashes are left as they are: a literal `\u{1b}` in a description reads the same as an
//! escaped ESC, which is harmless (it moves nothing) and keeps Windows paths readable.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// True for a character that must not reach a terminal raw.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// Displays untrusted text with [`needs_escape`] characters written as `\u{…}`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(needs_escape) {
            f.write_str(&rest[..i])?;
            let mut chars = rest[i..].chars();
            if let Some(c) = chars.next() {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            }
            rest = chars.as_str();
        }
        f.write_str(rest)
    }
}

/// [`Escaped`] for a path (lossy where it is not UTF-8).
pub fn path(p: &std::path::Path) -> String {
    Escaped(&p.to_string_lossy()).to_string()
}

/// Makes JSON serialized by `serde_json` safe for a terminal. `serde_json` escapes C0 controls
/// inside strings, but writes DEL, C1 controls, bidi overrides and U+2028/2029 raw. Each of
/// those is replaced by its `\uXXXX` escape, which leaves the JSON value the same: outside
/// strings, serialized JSON holds only ASCII punctuation, digits, letters and whitespace, so
/// every such character is inside a string. (All of them are in the Basic Multilingual Plane.)
/// A C0 character in serialized JSON is the pretty printer's own line feed: kept.
pub fn json_safe(json: &str) -> Cow<'_, str> {
    let escape = |c: char| needs_escape(c) && u32::from(c) >= 0x20;
    if !json.chars().any(escape) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escape(c) {
            // Infallible: writing to a String.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_bidi_and_separators_and_leaves_the_rest() {
        let hostile = "a\u{1b}[2K\rb\nc\u{7f}d\u{9b}e\u{202e}f\u{2028}g\u{2029}h\u{feff}i\u{200b}";
        assert_eq!(
            Escaped(hostile).to_string(),
            r"a\u{1b}[2K\u{d}b\u{a}c\u{7f}d\u{9b}e\u{202e}f\u{2028}g\u{2029}h\u{feff}i\u{200b}"
        );
        let fine = "Bestellungen → ERP, 100 % (ünïcödé) \\ 日本語 🚀";
        assert_eq!(Escaped(fine).to_string(), fine);
        assert_eq!(Escaped("").to_string(), "");
    }

    #[test]
    fn json_safe_keeps_the_value_and_leaves_no_raw_control() {
        let hostile = "x\u{1b}]0;t\u{7}\r\n\u{7f}\u{85}\u{9b}\u{202e}\u{2028}\u{2066}\"\\y";
        let doc = serde_json::json!({ "description": hostile, "n": 1 });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        let safe = json_safe(&text);
        assert!(
            safe.chars().filter(|c| needs_escape(*c)).all(|c| c == '\n'),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap_or_default();
        assert_eq!(back, doc);
        assert!(matches!(json_safe("{\"a\": \"b\"}"), Cow::Borrowed(_)));
    }
}
