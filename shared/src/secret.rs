//! Secret values: a wrapper that never prints its content and wipes it on drop.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A sensitive value (password, client secret, token, API key).
///
/// `Debug` and `Display` print `[redacted]`; the bytes are zeroed when the value is dropped. The
/// only way to the content is [`Secret::expose`], so every use of a secret is easy to find.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret text. Call only where the value must leave the process's keeping (sealing,
    /// encryption at rest, an outbound request).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Fixed-size secret bytes (keys), zeroed on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes<const N: usize>(pub(crate) [u8; N]);

impl<const N: usize> SecretBytes<N> {
    /// Wraps key material.
    pub fn new(bytes: [u8; N]) -> Self {
        SecretBytes(bytes)
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> fmt::Debug for SecretBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("canary-4c1d".into());
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "canary-4c1d");
    }
}
