//! Which entry names a bundle may hold: the syntax every reader needs (no path tricks) and the
//! bundle's layout. It is the one place the ZIP layer knows the bundle layout, so that a name
//! outside it is refused with the central directory, before any entry is read.

use crate::bundle::manifest::EntryPath;

/// Checks an entry name: 1–1024 bytes; no control characters, backslash, colon; not absolute;
/// no empty, `.` or `..` segment (so no trailing `/`); and within the bundle layout:
/// `manifest.json`, `manifest.sig`, or a path [`EntryPath::parse`] accepts.
pub fn check_entry_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 1024 {
        return Err("is empty or longer than 1024 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if name.contains('\\') {
        return Err("contains a backslash");
    }
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    if name.contains(':') {
        return Err("contains a colon (drive letter or stream)");
    }
    if name
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("has an empty, `.` or `..` segment");
    }
    if name != "manifest.json" && name != "manifest.sig" && EntryPath::parse(name).is_none() {
        return Err(
            "is outside the bundle layout (manifest.json, manifest.sig, mappings/<name>/mapping.json, mappings/<name>/files/<path>, credentials/<name>.json)",
        );
    }
    Ok(())
}
