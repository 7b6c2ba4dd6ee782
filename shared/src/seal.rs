//! Sealing sensitive values to a receiver.
//!
//! A bundle gets one random 32-byte data key, wrapped for the receiver's age X25519 recipient
//! (`wrapped_key`). Each sensitive value is ChaCha20-Poly1305 under that key with a fresh 12-byte
//! nonce and associated data binding it to its bundle, container, credential and field, so a
//! sealed value moved anywhere else fails to open. ring does the AEAD; age does the X25519 wrap,
//! since ring cannot hold a static X25519 key.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::str::FromStr as _;

use age::secrecy::ExposeSecret as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{self, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::SecureRandom as _;

use crate::secret::{Secret, SecretBytes};

/// Why sealing or opening failed. Never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not an `AGE-SECRET-KEY-1…` identity.
    #[error("not an age X25519 identity (AGE-SECRET-KEY-1…)")]
    BadIdentity,
    /// Not an `age1…` recipient.
    #[error("not an age X25519 recipient (age1…): {0}")]
    BadRecipient(String),
    /// The wrapped data key is not base64, not an age file for this identity, or not 32 bytes.
    #[error("the wrapped data key cannot be opened with this receiver's identity")]
    Unwrap,
    /// A sealed value is not base64, too short, or fails authentication (wrong key, or moved to
    /// another field, credential, container or bundle).
    #[error(
        "the sealed value does not open (tampered with, or moved from another field, credential, container or bundle)"
    )]
    Open,
    /// The opened value is not UTF-8.
    #[error("the sealed value is not UTF-8 text")]
    NotUtf8,
    /// The system random generator or age failed.
    #[error("sealing failed: {0}")]
    Internal(String),
}

/// The receiver's long-lived age X25519 identity, with its recipient (computing a recipient
/// is a scalar multiplication, so it is done once, not at every bundle that names one).
pub struct SealingIdentity {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
}

impl SealingIdentity {
    fn new(identity: age::x25519::Identity) -> SealingIdentity {
        let recipient = identity.to_public();
        SealingIdentity {
            identity,
            recipient,
        }
    }

    /// A new random identity.
    pub fn generate() -> SealingIdentity {
        SealingIdentity::new(age::x25519::Identity::generate())
    }

    /// Reads an identity file as `age-keygen` writes it (comment lines are skipped).
    pub fn parse(text: &str) -> Result<SealingIdentity, SealError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(SealError::BadIdentity)?;
        age::x25519::Identity::from_str(line)
            .map(SealingIdentity::new)
            .map_err(|_| SealError::BadIdentity)
    }

    /// The identity file's text, in `age-keygen`'s layout; wiped when dropped.
    pub fn to_file_text(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(format!(
            "# public key: {}\n{}\n",
            self.recipient(),
            self.identity.to_string().expose_secret()
        ))
    }

    /// The matching recipient.
    pub fn recipient(&self) -> SealingRecipient {
        SealingRecipient(self.recipient.clone())
    }
}

impl fmt::Debug for SealingIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingIdentity({})", self.recipient())
    }
}

/// A receiver's public sealing key, `age1…`.
#[derive(Clone)]
pub struct SealingRecipient(age::x25519::Recipient);

impl SealingRecipient {
    /// Parses `age1…`.
    pub fn parse(s: &str) -> Result<SealingRecipient, SealError> {
        age::x25519::Recipient::from_str(s.trim())
            .map(SealingRecipient)
            .map_err(|e| SealError::BadRecipient(e.to_string()))
    }
}

impl PartialEq for SealingRecipient {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Display for SealingRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for SealingRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingRecipient({})", self.0)
    }
}

/// What a sealed value is bound to: its associated data.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    /// The bundle's id, 32 hex digits.
    pub bundle_id: &'a str,
    /// The bundle's target container.
    pub container: &'a str,
    /// The credential's name.
    pub credential: &'a str,
    /// The sensitive field's name.
    pub field: &'a str,
}

impl SealContext<'_> {
    /// `"flowpack/1" ‖ 0 ‖ bundle_id ‖ 0 ‖ container ‖ 0 ‖ credential ‖ 0 ‖ field`.
    pub fn associated_data(&self) -> Vec<u8> {
        let mut ad = b"flowpack/1".to_vec();
        for part in [self.bundle_id, self.container, self.credential, self.field] {
            ad.push(0);
            ad.extend_from_slice(part.as_bytes());
        }
        ad
    }
}

/// A bundle's 32-byte data key.
#[derive(Debug)]
pub struct DataKey(SecretBytes<32>);

impl DataKey {
    /// Draws a fresh key.
    pub fn generate() -> Result<DataKey, SealError> {
        Ok(DataKey(SecretBytes::new(random()?)))
    }

    /// Wraps known key bytes (test vectors).
    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(SecretBytes::new(bytes))
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// The key wrapped for `to`: a binary age file, standard base64 (`wrapped_key`).
    pub fn wrap(&self, to: &SealingRecipient) -> Result<String, SealError> {
        self.wrap_for(std::slice::from_ref(to))
    }

    /// Wraps the key for several recipients in one age file: any of their identities opens it.
    pub fn wrap_for(&self, to: &[SealingRecipient]) -> Result<String, SealError> {
        let recipients = to.iter().map(|r| &r.0 as &dyn age::Recipient);
        let enc = age::Encryptor::with_recipients(recipients)
            .map_err(|e| SealError::Internal(e.to_string()))?;
        let mut out = Vec::new();
        let mut w = enc
            .wrap_output(&mut out)
            .map_err(|e| SealError::Internal(e.to_string()))?;
        w.write_all(self.expose())
            .map_err(|e| SealError::Internal(e.to_string()))?;
        w.finish().map_err(|e| SealError::Internal(e.to_string()))?;
        Ok(B64.encode(out))
    }

    /// Checks what anyone can check of `wrapped_key` without the receiver's identity: standard
    /// base64 of a binary age file whose header parses, with an X25519 stanza, and whose payload
    /// is exactly one STREAM chunk holding 32 bytes (16-byte nonce, 32 bytes, 16-byte tag).
    pub fn check_wrapped(wrapped: &str) -> Result<(), SealError> {
        if wrapped.len() > 4096 {
            return Err(SealError::Unwrap);
        }
        let bytes = B64.decode(wrapped).map_err(|_| SealError::Unwrap)?;
        age::Decryptor::new_buffered(&bytes[..]).map_err(|_| SealError::Unwrap)?;
        let text_end = bytes
            .windows(5)
            .position(|w| w == b"\n--- ")
            .ok_or(SealError::Unwrap)?;
        let header_end = bytes[text_end + 1..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(SealError::Unwrap)?
            + text_end
            + 2;
        let has_x25519 = bytes[..text_end].windows(11).any(|w| w == b"\n-> X25519 ");
        if !has_x25519 || bytes.len() - header_end != 16 + 32 + 16 {
            return Err(SealError::Unwrap);
        }
        Ok(())
    }

    /// Opens `wrapped_key` with the receiver's identity.
    pub fn unwrap(wrapped: &str, identity: &SealingIdentity) -> Result<DataKey, SealError> {
        // A wrapped 32-byte key is a few hundred bytes; refuse anything large before decoding.
        if wrapped.len() > 4096 {
            return Err(SealError::Unwrap);
        }
        let bytes = B64.decode(wrapped).map_err(|_| SealError::Unwrap)?;
        let dec = age::Decryptor::new_buffered(&bytes[..]).map_err(|_| SealError::Unwrap)?;
        let id: &dyn age::Identity = &identity.identity;
        let mut r = dec
            .decrypt(std::iter::once(id))
            .map_err(|_| SealError::Unwrap)?;
        let mut key = zeroize::Zeroizing::new(Vec::with_capacity(33));
        r.by_ref()
            .take(33)
            .read_to_end(&mut key)
            .map_err(|_| SealError::Unwrap)?;
        let key: [u8; 32] = key.as_slice().try_into().map_err(|_| SealError::Unwrap)?;
        Ok(DataKey::from_bytes(key))
    }

    /// Seals `value` for `ctx`: base64(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, ctx: &SealContext<'_>, value: &Secret) -> Result<String, SealError> {
        let sealed = seal_bytes(
            self.expose(),
            random()?,
            &ctx.associated_data(),
            value.expose().as_bytes(),
        );
        Ok(B64.encode(sealed))
    }

    /// Opens a sealed value for `ctx`.
    pub fn open(&self, ctx: &SealContext<'_>, sealed_b64: &str) -> Result<Secret, SealError> {
        let sealed = B64.decode(sealed_b64).map_err(|_| SealError::Open)?;
        let plain =
            open_bytes(self.expose(), &ctx.associated_data(), &sealed).ok_or(SealError::Open)?;
        String::from_utf8(plain).map(Secret::new).map_err(|e| {
            let mut bytes = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut bytes);
            SealError::NotUtf8
        })
    }
}

/// ChaCha20-Poly1305: nonce ‖ ciphertext ‖ tag. Also used by the receiver for secrets at rest.
pub fn seal_bytes(key: &[u8; 32], nonce: [u8; 12], ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    // The key is exactly 32 bytes, which is all `UnboundKey::new` checks for ChaCha20-Poly1305.
    #[allow(clippy::expect_used)]
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
    let mut out = nonce.to_vec();
    let mut buf = plaintext.to_vec();
    // Sealing only fails when the input exceeds ChaCha20's 256 GiB block limit.
    #[allow(clippy::expect_used)]
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(ad),
        &mut buf,
    )
    .expect("value under 256 GiB");
    out.extend_from_slice(&buf);
    zeroize::Zeroize::zeroize(&mut buf);
    out
}

/// Opens what [`seal_bytes`] made; `None` when it does not authenticate.
pub fn open_bytes(key: &[u8; 32], ad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 + 16 {
        return None;
    }
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(&sealed[..12]).ok()?;
    let mut buf = sealed[12..].to_vec();
    let len = key
        .open_in_place(nonce, aead::Aad::from(ad), &mut buf)
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

/// Random bytes from the system generator.
pub fn random<const N: usize>() -> Result<[u8; N], SealError> {
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| SealError::Internal("the system random generator failed".into()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(field: &'a str) -> SealContext<'a> {
        SealContext {
            bundle_id: "00112233445566778899aabbccddeeff",
            container: "/public/orders",
            credential: "erp",
            field,
        }
    }

    #[test]
    fn wrap_and_seal_round_trip() -> Result<(), SealError> {
        let id = SealingIdentity::generate();
        let key = DataKey::generate()?;
        let wrapped = key.wrap(&id.recipient())?;
        let back = DataKey::unwrap(&wrapped, &id)?;
        assert_eq!(back.expose(), key.expose());
        let sealed = key.seal(&ctx("password"), &Secret::new("hunter2".into()))?;
        assert_eq!(back.open(&ctx("password"), &sealed)?.expose(), "hunter2");
        Ok(())
    }

    #[test]
    fn sealed_value_moved_to_another_field_does_not_open() -> Result<(), SealError> {
        let key = DataKey::generate()?;
        let sealed = key.seal(&ctx("password"), &Secret::new("x".into()))?;
        assert!(matches!(
            key.open(&ctx("client_secret"), &sealed),
            Err(SealError::Open)
        ));
        let moved = SealContext {
            credential: "crm",
            ..ctx("password")
        };
        assert!(matches!(key.open(&moved, &sealed), Err(SealError::Open)));
        let moved = SealContext {
            container: "/public",
            ..ctx("password")
        };
        assert!(matches!(key.open(&moved, &sealed), Err(SealError::Open)));
        let moved = SealContext {
            bundle_id: "ffffffffffffffffffffffffffffffff",
            ..ctx("password")
        };
        assert!(matches!(key.open(&moved, &sealed), Err(SealError::Open)));
        Ok(())
    }

    #[test]
    fn wrapped_key_shape_is_checked_without_the_identity() -> Result<(), SealError> {
        let key = DataKey::generate()?;
        let wrapped = key.wrap(&SealingIdentity::generate().recipient())?;
        DataKey::check_wrapped(&wrapped)?;
        assert!(DataKey::check_wrapped(&B64.encode([7u8; 200])).is_err());
        let mut bytes = B64.decode(&wrapped).unwrap_or_default();
        bytes.truncate(bytes.len() - 16);
        assert!(DataKey::check_wrapped(&B64.encode(bytes)).is_err());
        Ok(())
    }

    #[test]
    fn another_receiver_cannot_unwrap() -> Result<(), SealError> {
        let key = DataKey::generate()?;
        let wrapped = key.wrap(&SealingIdentity::generate().recipient())?;
        assert!(matches!(
            DataKey::unwrap(&wrapped, &SealingIdentity::generate()),
            Err(SealError::Unwrap)
        ));
        assert!(matches!(
            DataKey::unwrap("not base64!", &SealingIdentity::generate()),
            Err(SealError::Unwrap)
        ));
        Ok(())
    }

    #[test]
    fn associated_data_layout() {
        let ad = ctx("password").associated_data();
        assert_eq!(
            ad,
            b"flowpack/1\x0000112233445566778899aabbccddeeff\x00/public/orders\x00erp\x00password"
        );
    }

    #[test]
    fn identity_file_round_trips() -> Result<(), SealError> {
        let id = SealingIdentity::generate();
        let again = SealingIdentity::parse(&id.to_file_text())?;
        assert_eq!(again.recipient(), id.recipient());
        assert!(!format!("{id:?}").contains("AGE-SECRET-KEY"));
        Ok(())
    }
}
