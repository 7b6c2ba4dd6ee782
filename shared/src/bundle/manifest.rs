//! `manifest.json`: what a bundle holds, signed.
//!
//! Its lists (`entries`, `credentials`) are read with a bound on their length while
//! `with_list_limit` is in force, so that a hostile manifest cannot make a reader hold more
//! records than the archive may have entries, however small each one is.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use crate::keys::KeyId;
use crate::model::credential::CredentialType;
use crate::names::{ContainerPath, Name, RelPath};
use crate::timefmt::Timestamp;

/// The format string of this version.
pub const FORMAT: &str = "flowpack-bundle/1";

/// A bundle's id: 16 random bytes as 32 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct BundleId(String);

impl BundleId {
    /// A fresh random id.
    pub fn generate() -> Result<BundleId, crate::seal::SealError> {
        Ok(BundleId(hex::encode(crate::seal::random::<16>()?)))
    }

    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<BundleId> {
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| BundleId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BundleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for BundleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BundleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        BundleId::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("expected 32 lowercase hex digits"))
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        KeyId::parse(&s).ok_or_else(|| serde::de::Error::custom("expected 16 lowercase hex digits"))
    }
}

/// A SHA-256 digest, as 64 lowercase hex digits in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64
            || s.bytes().any(|b| b.is_ascii_uppercase())
            || hex::decode_to_slice(&*s, &mut out).is_err()
        {
            return Err(serde::de::Error::custom("expected 64 lowercase hex digits"));
        }
        Ok(Sha256(out))
    }
}

/// A deployment bundle or a standalone credential bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleKind {
    /// Mappings and their credentials.
    Deployment,
    /// Credentials only.
    Credentials,
}

/// What a payload entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// `mappings/<name>/mapping.json`.
    Mapping,
    /// `mappings/<name>/files/<path>`.
    MappingFile,
    /// `credentials/<name>.json`.
    Credential,
}

/// How a credential's sensitive fields travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretsState {
    /// Sealed to the receiver.
    Sealed,
    /// In clear (`--plaintext-secrets`).
    Plaintext,
    /// Left out: `include_in_deployment` is false.
    Omitted,
    /// The flag is set but no sensitive field is filled in.
    None,
}

impl SecretsState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretsState::Sealed => "sealed",
            SecretsState::Plaintext => "plaintext",
            SecretsState::Omitted => "omitted",
            SecretsState::None => "none",
        }
    }
}

/// The sealing block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealing {
    /// The receiver's `age1…` recipient (the first one, when the bundle is sealed to several).
    pub recipient: String,
    /// The other receivers' recipients, when the bundle is sealed to several: any of them can
    /// open it. Absent when it is sealed to one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_recipients: Vec<String>,
    /// The data key as a binary age file (one stanza per recipient), standard base64.
    pub wrapped_key: String,
}

impl Sealing {
    /// Every recipient the bundle is sealed to, the first one first.
    pub fn recipients(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.recipient.as_str())
            .chain(self.other_recipients.iter().map(String::as_str))
    }
}

/// One payload entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// The entry's name in the archive.
    pub path: String,
    /// Uncompressed size.
    pub size: u64,
    /// SHA-256 of the uncompressed bytes.
    pub sha256: Sha256,
    /// What it is.
    pub kind: EntryKind,
}

/// One credential's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSummary {
    /// Its name.
    pub name: Name,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// How its secrets travel.
    pub secrets: SecretsState,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Random id.
    pub bundle_id: BundleId,
    /// Deployment or credentials.
    pub kind: BundleKind,
    /// Where it is applied.
    pub target_container: ContainerPath,
    /// The environment chosen with `--env`.
    pub environment: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// After this it is refused.
    pub expires_at: Timestamp,
    /// The signing key's id.
    pub signer_key_id: KeyId,
    /// The sealing block, when secrets are sealed.
    pub sealing: Option<Sealing>,
    /// Payload entries, in archive order.
    #[serde(deserialize_with = "bounded_list")]
    pub entries: Vec<ManifestEntry>,
    /// The credentials it carries.
    #[serde(deserialize_with = "bounded_list")]
    pub credentials: Vec<CredentialSummary>,
}

thread_local! {
    /// The most items a manifest's list may hold while it is read on this thread, and whether
    /// a list went over it (see [`with_list_limit`]). `None`: no bound.
    static LIST_LIMIT: Cell<(Option<usize>, bool)> = const { Cell::new((None, false)) };
}

/// Runs `parse` with the manifest's lists bounded to `max` items each, on this thread, and
/// says whether a list went over the bound (the parse then failed). Serde gives a derived
/// `Deserialize` no way to carry such a bound, hence the thread-local.
pub(crate) fn with_list_limit<T>(max: usize, parse: impl FnOnce() -> T) -> (T, bool) {
    struct Restore((Option<usize>, bool));
    impl Drop for Restore {
        fn drop(&mut self) {
            LIST_LIMIT.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LIST_LIMIT.with(|l| l.replace((Some(max), false))));
    let out = parse();
    let over = LIST_LIMIT.with(|l| l.get().1);
    (out, over)
}

/// A list of at most the current [`with_list_limit`] bound: the item after the last allowed
/// one fails the parse before another is read.
fn bounded_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let max = LIST_LIMIT.with(|l| l.get().0);
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                if max.is_some_and(|max| out.len() >= max) {
                    LIST_LIMIT.with(|l| l.set((max, true)));
                    return Err(serde::de::Error::custom(format_args!(
                        "lists more than {} items, the limit on a bundle's entries",
                        max.unwrap_or_default()
                    )));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded(std::marker::PhantomData))
}

/// Where an entry path points, per the payload layout (docs/FORMAT.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPath {
    /// `mappings/<name>/mapping.json`.
    Mapping(Name),
    /// `mappings/<name>/files/<path>`.
    MappingFile(Name, RelPath),
    /// `credentials/<name>.json`.
    Credential(Name),
}

impl EntryPath {
    /// Parses an entry name against the layout.
    pub fn parse(path: &str) -> Option<EntryPath> {
        if let Some(rest) = path.strip_prefix("mappings/") {
            let (name, tail) = rest.split_once('/')?;
            let name = Name::parse(name).ok()?;
            if tail == "mapping.json" {
                return Some(EntryPath::Mapping(name));
            }
            let file = RelPath::parse(tail.strip_prefix("files/")?).ok()?;
            return Some(EntryPath::MappingFile(name, file));
        }
        let name = path.strip_prefix("credentials/")?.strip_suffix(".json")?;
        Some(EntryPath::Credential(Name::parse(name).ok()?))
    }

    /// The entry name.
    pub fn to_path(&self) -> String {
        match self {
            EntryPath::Mapping(n) => format!("mappings/{n}/mapping.json"),
            EntryPath::MappingFile(n, f) => format!("mappings/{n}/files/{f}"),
            EntryPath::Credential(n) => format!("credentials/{n}.json"),
        }
    }

    /// The entry kind this path must have.
    pub fn kind(&self) -> EntryKind {
        match self {
            EntryPath::Mapping(_) => EntryKind::Mapping,
            EntryPath::MappingFile(..) => EntryKind::MappingFile,
            EntryPath::Credential(_) => EntryKind::Credential,
        }
    }
}
