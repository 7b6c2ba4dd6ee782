//! Finding a secret in a text however it was encoded, and cutting it out.
//!
//! This is the second line of defence: the receiver shows nothing a provider wrote (see the
//! parent module), so this pass runs over texts the receiver composed itself from
//! non-sensitive fields, in case a secret was put where it does not belong (an API key in the
//! path of a `verify_url`, say). It looks for each secret raw and through several decodings of
//! the text at once — percent-encoding (also doubled), form encoding (`+` for a space), JSON
//! string escapes, and these combined — and for the parts of a base64 or base64url encoding
//! (padded or not) that depend on the secret alone, at each of the three byte alignments, so an
//! encoding of a longer value that contains the secret (an HTTP Basic `id:secret` pair) is
//! found too. Whatever part of the original text decodes to a secret is replaced by
//! `[redacted]`.
//!
//! Secrets shorter than [`MIN_SECRET`] bytes are not searched for: they would match ordinary
//! words, and the redaction itself would then tell the reader what the secret is.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Shortest secret searched for, in bytes.
pub const MIN_SECRET: usize = 4;

/// What replaces a secret.
const REDACTED: &str = "[redacted]";

/// A decoded byte and the range of the original text it came from.
type Mapped = Vec<(u8, usize, usize)>;

fn identity(text: &str) -> Mapped {
    text.bytes()
        .enumerate()
        .map(|(i, b)| (b, i, i + 1))
        .collect()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` decoded (and `+` as a space when `form`); anything else kept.
fn percent(input: &Mapped, form: bool) -> Mapped {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let (b, start, end) = input[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                input.get(i + 1).and_then(|x| hex(x.0)),
                input.get(i + 2).and_then(|x| hex(x.0)),
            )
        {
            out.push((h << 4 | l, start, input[i + 2].2));
            i += 3;
            continue;
        }
        out.push((if form && b == b'+' { b' ' } else { b }, start, end));
        i += 1;
    }
    out
}

/// JSON string escapes decoded (`\"`, `\\`, `\/`, `\n`…, `\uXXXX` with surrogate pairs);
/// anything else kept.
fn json(input: &Mapped) -> Mapped {
    let unit = |at: usize| -> Option<u16> {
        if input.get(at)?.0 != b'\\' || input.get(at + 1)?.0 != b'u' {
            return None;
        }
        let mut v: u16 = 0;
        for k in 0..4 {
            v = v << 4 | u16::from(hex(input.get(at + 2 + k)?.0)?);
        }
        Some(v)
    };
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let (b, start, end) = input[i];
        if b == b'\\'
            && let Some(&(next, _, next_end)) = input.get(i + 1)
        {
            let simple = match next {
                b'"' => Some(b'"'),
                b'\\' => Some(b'\\'),
                b'/' => Some(b'/'),
                b'b' => Some(8),
                b'f' => Some(12),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                _ => None,
            };
            if let Some(c) = simple {
                out.push((c, start, next_end));
                i += 2;
                continue;
            }
            if let Some(u) = unit(i) {
                let (c, used) = match (u, unit(i + 6)) {
                    (0xD800..=0xDBFF, Some(lo @ 0xDC00..=0xDFFF)) => (
                        char::from_u32(
                            0x10000 + ((u32::from(u) - 0xD800) << 10) + (u32::from(lo) - 0xDC00),
                        ),
                        12,
                    ),
                    _ => (char::from_u32(u32::from(u)), 6),
                };
                let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut buf = [0u8; 4];
                let stop = input[i + used - 1].2;
                for &x in c.encode_utf8(&mut buf).as_bytes() {
                    out.push((x, start, stop));
                }
                i += used;
                continue;
            }
        }
        out.push((b, start, end));
        i += 1;
    }
    out
}

/// The parts of the base64 and base64url encodings of any value containing `secret` that
/// depend on `secret` alone: one per alphabet and byte alignment (padding is never inside).
pub fn base64_cores(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for k in 0..3usize {
        let mut bytes = vec![0u8; k];
        bytes.extend_from_slice(secret);
        // Character i covers bits [6i, 6i+6); the secret covers bits [8k, 8(k+n)).
        let start = (8 * k).div_ceil(6);
        let end = 8 * (k + secret.len()) / 6;
        if end <= start {
            continue;
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let enc = engine.encode(&bytes);
            if let Some(core) = enc.get(start..end)
                && core.len() >= MIN_SECRET
                && !out.iter().any(|c| c == core)
            {
                out.push(core.to_owned());
            }
        }
    }
    out
}

/// `text` with every occurrence of each secret, in any of the encodings above, replaced by
/// `[redacted]`, and control characters dropped.
pub fn scrub(text: &str, secrets: &[&[u8]]) -> String {
    let mut needles: Vec<Vec<u8>> = Vec::new();
    for s in secrets.iter().filter(|s| s.len() >= MIN_SECRET) {
        needles.push(s.to_vec());
        // The form encoding is what goes into an HTTP Basic pair (RFC 6749 §2.3.1).
        let form: String = url::form_urlencoded::byte_serialize(s).collect();
        for raw in [s.to_vec(), form.into_bytes()] {
            needles.extend(base64_cores(&raw).into_iter().map(String::into_bytes));
        }
    }
    if needles.is_empty() {
        return text.chars().filter(|c| !c.is_control()).collect();
    }
    // The text raw and JSON-unescaped, each percent-decoded once or twice, the last time with
    // or without `+` as a space; and a form body inside a JSON string inside a form.
    let raw = identity(text);
    let mut views = Vec::new();
    for base in [json(&raw), raw] {
        let once = percent(&base, false);
        views.push(percent(&once, false));
        views.push(percent(&once, true));
        views.push(json(&percent(&base, true)));
        views.push(percent(&base, true));
        views.push(once);
        views.push(base);
    }
    let mut hidden = vec![false; text.len()];
    for view in &views {
        let bytes: Vec<u8> = view.iter().map(|x| x.0).collect();
        for needle in &needles {
            if needle.len() > bytes.len() {
                continue;
            }
            for at in 0..=bytes.len() - needle.len() {
                if bytes[at..at + needle.len()] == needle[..] {
                    let (from, to) = (view[at].1, view[at + needle.len() - 1].2);
                    hidden[from..to].iter_mut().for_each(|h| *h = true);
                }
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut in_secret = false;
    for (i, c) in text.char_indices() {
        // A character is hidden when any of its bytes is.
        if hidden[i..i + c.len_utf8()].iter().any(|h| *h) {
            if !in_secret {
                out.push_str(REDACTED);
                in_secret = true;
            }
            continue;
        }
        in_secret = false;
        if !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    use super::*;

    const SECRET: &str = "Cs+/ é&=%x9Q\"\\";

    fn encodings(s: &str) -> Vec<String> {
        let pct = |set| percent_encoding_upper(s, set);
        let form: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
        let json = serde_json::to_string(s).unwrap();
        let json = json.trim_matches('"').to_owned();
        let ascii_json: String = s
            .encode_utf16()
            .map(|u| {
                if u < 0x80 && u as u8 != b'"' && u as u8 != b'\\' {
                    (u as u8 as char).to_string()
                } else {
                    format!("\\u{u:04x}")
                }
            })
            .collect();
        let pair = format!("client:{form}");
        vec![
            s.to_owned(),
            pct(false),
            pct(true),
            form.clone(),
            json,
            ascii_json,
            STANDARD.encode(s),
            STANDARD_NO_PAD.encode(s),
            URL_SAFE.encode(s),
            URL_SAFE_NO_PAD.encode(s),
            format!("Basic {}", STANDARD.encode(&pair)),
            URL_SAFE_NO_PAD.encode(format!("ab:{s}")),
            STANDARD.encode(format!("a:{s}")),
            // A form body echoed inside JSON, and a doubly encoded one.
            serde_json::to_string(&format!("client_secret={form}&x=1")).unwrap(),
            form.replace('%', "%25"),
        ]
    }

    /// Percent-encodes every byte that is not alphanumeric (lower-case hex when `lower`).
    fn percent_encoding_upper(s: &str, lower: bool) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else if lower {
                    format!("%{b:02x}")
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    #[test]
    fn every_encoding_of_a_secret_is_cut_out() {
        for e in encodings(SECRET) {
            let text = format!("provider said: <{e}> and more");
            let out = scrub(&text, &[SECRET.as_bytes()]);
            assert!(out.contains("[redacted]"), "{e} → {out}");
            assert!(out.starts_with("provider said: <"), "{out}");
            assert!(out.ends_with("> and more"), "{out}");
            for other in encodings(SECRET) {
                if other.len() >= 6 {
                    assert!(!out.contains(&other), "{other} left in {out}");
                }
            }
        }
    }

    #[test]
    fn text_without_secrets_is_kept_but_control_characters_go() {
        assert_eq!(
            scrub("plain\ntext\u{1b}[2J", &[b"nothing-here"]),
            "plaintext[2J"
        );
        // Too short to search for.
        assert_eq!(scrub("the abc word", &[b"abc"]), "the abc word");
    }

    #[test]
    fn base64_cores_are_found_at_every_alignment() {
        for prefix in ["", "a", "ab", "abc"] {
            let whole = STANDARD.encode(format!("{prefix}secret-value{prefix}"));
            let out = scrub(&whole, &[b"secret-value"]);
            assert!(out.contains("[redacted]"), "{prefix}: {whole} → {out}");
            assert!(out.len() < whole.len(), "{out}");
        }
    }
}
