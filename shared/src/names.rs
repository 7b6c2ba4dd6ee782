//! Checked names: the only way a name, container path or entry path enters the program.
//!
//! Every value of these types has passed its rule once, at the edge; the rest of the code never
//! sees an unchecked string. None of them can hold `..`, a backslash, a control character or an
//! absolute path, so no path built from them can leave its place.

use std::fmt;

/// Why a name or path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// A credential, mapping or parameter name: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Checks `s` against the name rule.
    pub fn parse(s: &str) -> Result<Name, NameError> {
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 128
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        // A name of dots only after the first character is fine ("a..b"), but a name must not be
        // "." or ".." — excluded by the first-character rule.
        if ok {
            Ok(Name(s.to_owned()))
        } else {
            Err(NameError(format!(
                "invalid name {}: a name is 1 to 128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
                quoted(s)
            )))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A container path: `/` or `/seg/seg…`, each segment a [`Name`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPath(String);

impl ContainerPath {
    /// The root container `/`.
    pub fn root() -> ContainerPath {
        ContainerPath("/".to_owned())
    }

    /// Checks `s`: a leading `/`, no trailing `/` (except the root), segments that are names.
    pub fn parse(s: &str) -> Result<ContainerPath, NameError> {
        if s == "/" {
            return Ok(ContainerPath::root());
        }
        let bad = || {
            NameError(format!(
                "invalid container path {}: expected \"/\" or \"/segment/…\" where each segment is a name (A-Z a-z 0-9 . _ -, starting with a letter or digit)",
                quoted(s)
            ))
        };
        let rest = s.strip_prefix('/').ok_or_else(bad)?;
        if s.len() > 1024 {
            return Err(bad());
        }
        for seg in rest.split('/') {
            Name::parse(seg).map_err(|_| bad())?;
        }
        Ok(ContainerPath(s.to_owned()))
    }

    /// Parses the form used in URLs: the path without its leading slash, empty for the root.
    pub fn from_url_form(s: &str) -> Result<ContainerPath, NameError> {
        if s.is_empty() {
            Ok(ContainerPath::root())
        } else {
            ContainerPath::parse(&format!("/{s}"))
        }
    }

    /// The path as text, with its leading slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The segments, none for the root.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The parent container, `None` for the root.
    pub fn parent(&self) -> Option<ContainerPath> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/').unwrap_or(0);
        Some(if cut == 0 {
            ContainerPath::root()
        } else {
            ContainerPath(self.0[..cut].to_owned())
        })
    }

    /// This path and every ancestor, from the root down.
    pub fn lineage(&self) -> Vec<ContainerPath> {
        let mut out = vec![self.clone()];
        while let Some(p) = out.last().and_then(|p| p.parent()) {
            out.push(p);
        }
        out.reverse();
        out
    }

    /// The last segment, `None` for the root.
    pub fn last_segment(&self) -> Option<&str> {
        self.segments().last()
    }

    /// True when `self` is `other` or one of its ancestors (segment-wise: `/pub` does not cover
    /// `/public`).
    pub fn covers(&self, other: &ContainerPath) -> bool {
        self.is_root()
            || other.0 == self.0
            || (other.0.starts_with(&self.0) && other.0.as_bytes().get(self.0.len()) == Some(&b'/'))
    }

    /// The child container `self/name`.
    pub fn child(&self, name: &Name) -> ContainerPath {
        if self.is_root() {
            ContainerPath(format!("/{}", name.as_str()))
        } else {
            ContainerPath(format!("{}/{}", self.0, name.as_str()))
        }
    }

    /// The path of an object named `name` in this container (`/public/orders/erp`).
    pub fn object_path(&self, name: &Name) -> String {
        self.child(name).0
    }
}

/// A relative file path inside a mapping: `/`-separated segments, none empty, `.` or `..`, no
/// backslash, colon, control character or NUL; at most 512 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// Checks `s` against the relative path rule.
    pub fn parse(s: &str) -> Result<RelPath, NameError> {
        let bad = |why: &str| NameError(format!("invalid file path {}: {why}", quoted(s)));
        if s.is_empty() || s.len() > 512 {
            return Err(bad("must be 1 to 512 bytes"));
        }
        if s.starts_with('/') {
            return Err(bad("absolute paths are not allowed"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(bad("control characters are not allowed"));
        }
        if s.contains('\\') {
            return Err(bad("backslashes are not allowed; use /"));
        }
        if s.contains(':') {
            return Err(bad("colons (drive letters, streams) are not allowed"));
        }
        for seg in s.split('/') {
            match seg {
                "" => return Err(bad("empty path segment")),
                "." | ".." => return Err(bad("`.` and `..` segments are not allowed")),
                _ => {}
            }
        }
        Ok(RelPath(s.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! text_impls {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    )*};
}
text_impls!(Name, ContainerPath, RelPath);

/// Quotes untrusted text for an error message: escaped, and cut at 80 characters.
pub fn quoted(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rule_accepts_and_refuses() {
        for ok in ["erp", "orders-to-erp", "a.b_c-d", "0", &"x".repeat(128)] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "_a",
            "a/b",
            "a b",
            "é",
            &"x".repeat(129),
            "a\0",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn container_paths_are_strict() {
        for ok in ["/", "/public", "/public/orders", "/a.b/c-d"] {
            assert_eq!(
                ContainerPath::parse(ok).map(|p| p.to_string()),
                Ok(ok.to_owned())
            );
        }
        for bad in [
            "",
            "public",
            "/public/",
            "//",
            "/a//b",
            "/public/../x",
            "/./x",
            "/a\\b",
            "/a b",
        ] {
            assert!(ContainerPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn container_cover_is_segment_wise() {
        let p = |s| ContainerPath::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert!(p("/").covers(&p("/x")));
        assert!(p("/public").covers(&p("/public")));
        assert!(p("/public").covers(&p("/public/orders")));
        assert!(!p("/pub").covers(&p("/public")));
        assert!(!p("/public/orders").covers(&p("/public")));
        assert_eq!(p("/a/b").parent(), Some(p("/a")));
        assert_eq!(p("/a").parent(), Some(p("/")));
        assert_eq!(p("/a/b").lineage(), vec![p("/"), p("/a"), p("/a/b")]);
    }

    #[test]
    fn relative_paths_refuse_every_escape() {
        for ok in ["orders.mfd", "schemas/order.xsd", "a/b/c.d", "..a", "a.."] {
            assert!(RelPath::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "C:/x",
            "c:x",
            "a\0b",
            "a\nb",
            "a\u{7f}",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?}");
        }
    }
}
