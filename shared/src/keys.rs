//! Ed25519 signing keys in OpenSSL's PEM forms, and key ids.
//!
//! Private keys are written as PKCS#8 **v1** (seed only), which is what `openssl genpkey
//! -algorithm ed25519` writes and what OpenSSL 3 and Python `cryptography` load; ring's own
//! `generate_pkcs8` writes v2, which they refuse (PITFALLS.md). Public keys are SubjectPublicKeyInfo.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SecureRandom as _;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

use crate::secret::SecretBytes;

/// DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not a PEM block of the expected label.
    #[error("not a PEM {0} block")]
    NotPem(&'static str),
    /// The PEM body is not base64.
    #[error("the PEM body is not valid base64")]
    BadBase64,
    /// The DER inside is not an Ed25519 key of the expected form.
    #[error(
        "not an Ed25519 {0} (expected what `openssl genpkey -algorithm ed25519` / `openssl pkey -pubout` write)"
    )]
    NotEd25519(&'static str),
    /// ring refused the key material.
    #[error("invalid Ed25519 key material")]
    Invalid,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// The 8-byte key id: the first 8 bytes of SHA-256 over the raw public key, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// Parses 16 lowercase hex digits.
    pub fn parse(s: &str) -> Option<KeyId> {
        if s.len() != 16 || s.bytes().any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 8];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(KeyId(out))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VerifyingKey([u8; 32]);

impl VerifyingKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> VerifyingKey {
        VerifyingKey(bytes)
    }

    /// Reads a `PUBLIC KEY` PEM block (SubjectPublicKeyInfo).
    pub fn from_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
        let der = pem_decode(pem, "PUBLIC KEY")?;
        let raw = der
            .strip_prefix(&SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or(KeyError::NotEd25519("public key"))?;
        let mut out = [0u8; 32];
        out.copy_from_slice(raw);
        Ok(VerifyingKey(out))
    }

    /// The key as a `PUBLIC KEY` PEM block, as `openssl pkey -pubout` writes it.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem_encode("PUBLIC KEY", &der)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        KeyId(id)
    }

    /// True when `sig` is this key's Ed25519 signature over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.key_id())
    }
}

/// An Ed25519 private key.
pub struct SigningKey {
    seed: SecretBytes<32>,
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Draws a new key from the system's random generator.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        SigningKey::from_seed(SecretBytes::new(seed))
    }

    /// Builds the key from its 32-byte seed.
    pub fn from_seed(seed: SecretBytes<32>) -> Result<SigningKey, KeyError> {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(seed.expose()).map_err(|_| KeyError::Invalid)?;
        Ok(SigningKey { seed, pair })
    }

    /// Reads a `PRIVATE KEY` PEM block: PKCS#8 v1 as OpenSSL writes it (v2 with the public key
    /// is accepted too, and the public key checked).
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        let der = zeroize::Zeroizing::new(pem_decode(pem, "PRIVATE KEY")?);
        if let Some(seed) = der
            .strip_prefix(&PKCS8_V1_PREFIX[..])
            .filter(|s| s.len() == 32)
        {
            let mut s = [0u8; 32];
            s.copy_from_slice(seed);
            return SigningKey::from_seed(SecretBytes::new(s));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| KeyError::NotEd25519("private key"))?;
        // Recover the seed: in every PKCS#8 form ring accepts, it follows the v1 prefix's tail.
        let tail = [0x04, 0x22, 0x04, 0x20];
        let at = der
            .windows(4)
            .position(|w| w == tail)
            .ok_or(KeyError::NotEd25519("private key"))?;
        let seed = der
            .get(at + 4..at + 36)
            .ok_or(KeyError::NotEd25519("private key"))?;
        let mut s = [0u8; 32];
        s.copy_from_slice(seed);
        let key = SigningKey::from_seed(SecretBytes::new(s))?;
        if key.pair.public_key().as_ref() != pair.public_key().as_ref() {
            return Err(KeyError::Invalid);
        }
        Ok(key)
    }

    /// The key as a `PRIVATE KEY` PEM block (PKCS#8 v1), wiped when dropped.
    pub fn to_pem(&self) -> zeroize::Zeroizing<String> {
        let mut der = zeroize::Zeroizing::new(PKCS8_V1_PREFIX.to_vec());
        der.extend_from_slice(self.seed.expose());
        zeroize::Zeroizing::new(pem_encode("PRIVATE KEY", &der))
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey(out)
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.verifying_key().key_id())
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(pem: &str, label: &'static str) -> Result<Vec<u8>, KeyError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or(KeyError::NotPem(label))? + begin.len();
    let stop = pem[start..].find(&end).ok_or(KeyError::NotPem(label))? + start;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    B64.decode(body).map_err(|_| KeyError::BadBase64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by `openssl genpkey -algorithm ed25519` (fixtures/keys/signer.key).
    const OPENSSL_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBsltbyL3WD+qVbb4ifvdUavt5r3CkfDUAo3Uy7nC/Ql\n-----END PRIVATE KEY-----\n";
    const OPENSSL_PUB: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAx/AIAac9frivkAJDZfIbcpLoH+IDhQyWGZV2tH0+HS4=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn reads_openssl_keys_and_writes_them_back_identically() {
        let k = SigningKey::from_pem(OPENSSL_KEY).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.to_pem().as_str(), OPENSSL_KEY);
        assert_eq!(k.verifying_key().to_pem(), OPENSSL_PUB);
        let p = VerifyingKey::from_pem(OPENSSL_PUB).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p, k.verifying_key());
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_message() {
        let k = SigningKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let other = SigningKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let sig = k.sign(b"manifest");
        assert!(k.verifying_key().verify(b"manifest", &sig));
        assert!(!k.verifying_key().verify(b"manifesT", &sig));
        assert!(!other.verifying_key().verify(b"manifest", &sig));
        assert!(!k.verifying_key().verify(b"manifest", &sig[..63]));
    }

    #[test]
    fn key_id_is_sha256_prefix_of_raw_key() {
        let p = VerifyingKey::from_pem(OPENSSL_PUB).unwrap_or_else(|e| panic!("{e}"));
        let d = ring::digest::digest(&ring::digest::SHA256, p.as_bytes());
        assert_eq!(p.key_id().to_string(), hex::encode(&d.as_ref()[..8]));
        assert_eq!(KeyId::parse(&p.key_id().to_string()), Some(p.key_id()));
        assert_eq!(KeyId::parse("ABCDEF0123456789"), None);
    }

    #[test]
    fn refuses_other_pem_and_other_algorithms() {
        assert!(matches!(
            SigningKey::from_pem(OPENSSL_PUB),
            Err(KeyError::NotPem(_))
        ));
        // An X25519 SPKI (OID 1.3.101.110) is not an Ed25519 key.
        let x25519 = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEAx/AIAac9frivkAJDZfIbcpLoH+IDhQyWGZV2tH0+HS4=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            VerifyingKey::from_pem(x25519),
            Err(KeyError::NotEd25519(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_seed() {
        let k = SigningKey::from_pem(OPENSSL_KEY).unwrap_or_else(|e| panic!("{e}"));
        assert!(format!("{k:?}").starts_with("SigningKey("));
        assert!(!format!("{k:?}").contains("MC4C"));
    }
}
