//! Bearer tokens, principals and their grants.
//!
//! A token is `fpt_<id>_<secret>`: `id` is 16 hex digits (the lookup key), `secret` 32 random
//! bytes in base64url. The database holds the id and SHA-256 of the secret only; the secret is
//! compared in constant time. Tokens and grants are read from the database on every request,
//! so `token create` takes effect while `serve` runs.

use base64::Engine;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::random;
use subtle::ConstantTimeEq;

use crate::store::{self, Db, Store};

/// A permission on a container prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// List and show.
    Read,
    /// Deploy, delete, change.
    Write,
    /// Resolve credentials, obtain tokens.
    Use,
}

impl Perm {
    /// The permission's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Read => "read",
            Perm::Write => "write",
            Perm::Use => "use",
        }
    }

    fn parse(s: &str) -> Option<Perm> {
        Some(match s {
            "read" => Perm::Read,
            "write" => Perm::Write,
            "use" => Perm::Use,
            _ => return None,
        })
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermSet {
    read: bool,
    write: bool,
    usage: bool,
}

impl PermSet {
    /// read, write and use.
    pub fn all() -> PermSet {
        PermSet {
            read: true,
            write: true,
            usage: true,
        }
    }

    /// True when `p` is in the set.
    pub fn has(self, p: Perm) -> bool {
        match p {
            Perm::Read => self.read,
            Perm::Write => self.write,
            Perm::Use => self.usage,
        }
    }

    fn insert(&mut self, p: Perm) {
        match p {
            Perm::Read => self.read = true,
            Perm::Write => self.write = true,
            Perm::Use => self.usage = true,
        }
    }

    /// Parses `read,write,use` (any non-empty subset).
    pub fn parse(s: &str) -> Result<PermSet, String> {
        let mut set = PermSet::default();
        for part in s.split(',').map(str::trim) {
            let p = Perm::parse(part).ok_or_else(|| {
                format!("unknown permission {part:?}; expected read, write or use")
            })?;
            set.insert(p);
        }
        Ok(set)
    }

    /// The set as stored: `read,use`.
    pub fn to_text(self) -> String {
        [Perm::Read, Perm::Write, Perm::Use]
            .into_iter()
            .filter(|p| self.has(*p))
            .map(Perm::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses a `--grant PREFIX=read,write,use` argument.
pub fn parse_grant(s: &str) -> Result<(ContainerPath, PermSet), String> {
    let (prefix, perms) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid grant {s:?}: expected PREFIX=read,write,use"))?;
    let prefix = ContainerPath::parse(prefix).map_err(|e| e.0)?;
    Ok((prefix, PermSet::parse(perms)?))
}

/// The root container path.
pub fn root() -> ContainerPath {
    ContainerPath::root()
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its name.
    pub name: String,
    /// Its grants.
    pub grants: Vec<(ContainerPath, PermSet)>,
}

impl Principal {
    /// True when a grant on `path` or one of its ancestors includes `perm`.
    pub fn can(&self, perm: Perm, path: &ContainerPath) -> bool {
        self.grants
            .iter()
            .any(|(prefix, set)| set.has(perm) && prefix.covers(path))
    }

    /// The containers whose listings (deployments, audit) the caller may read.
    pub fn visible(&self) -> store::Visible {
        let prefixes: Vec<&ContainerPath> = self
            .grants
            .iter()
            .filter(|(_, set)| set.has(Perm::Read))
            .map(|(prefix, _)| prefix)
            .collect();
        if prefixes.iter().any(|p| p.is_root()) {
            return store::Visible::All;
        }
        store::Visible::Under(prefixes.iter().map(|p| p.as_str().to_owned()).collect())
    }

    /// True when the caller holds `perm` anywhere.
    pub fn has_any(&self, perm: Perm) -> bool {
        self.grants.iter().any(|(_, set)| set.has(perm))
    }
}

/// A new token's text: never stored, shown once.
pub type TokenText = zeroize::Zeroizing<String>;

fn sha256(b: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, b)
}

/// Creates principal `name` if needed, adds the grants, and issues a new token for it.
pub fn create_token(
    store: &Store,
    name: &str,
    grants: &[(ContainerPath, PermSet)],
) -> anyhow::Result<TokenText> {
    let id = hex::encode(random::<8>().map_err(|e| anyhow::anyhow!("{e}"))?);
    let secret = zeroize::Zeroizing::new(random::<32>().map_err(|e| anyhow::anyhow!("{e}"))?);
    let secret_text = zeroize::Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret[..]),
    );
    let mut db = store.db()?;
    let tx = db.write()?;
    let pid = tx.ensure_principal(name)?;
    for (prefix, perms) in grants {
        tx.add_grant(pid, prefix.as_str(), &perms.to_text())?;
    }
    tx.insert_token(&id, pid, sha256(secret_text.as_bytes()).as_ref())?;
    tx.commit()?;
    Ok(zeroize::Zeroizing::new(format!(
        "fpt_{id}_{}",
        secret_text.as_str()
    )))
}

/// Finds the principal a token belongs to; `None` for any token that is not valid.
pub fn authenticate(db: &Db, token: &str) -> store::Result<Option<Principal>> {
    let Some(rest) = token.strip_prefix("fpt_") else {
        return Ok(None);
    };
    let Some((id, secret)) = rest.split_once('_') else {
        return Ok(None);
    };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let presented = sha256(secret.as_bytes());
    let Some((stored, name, rows)) = db.principal_by_token(id)? else {
        return Ok(None);
    };
    // Both are SHA-256 digests; a stored hash of another length compares unequal.
    if !bool::from(stored.as_slice().ct_eq(presented.as_ref())) {
        return Ok(None);
    }
    let mut grants = Vec::new();
    for (prefix, perms) in rows {
        // Rows are written by this program; a row that does not parse grants nothing.
        if let (Ok(p), Ok(s)) = (ContainerPath::parse(&prefix), PermSet::parse(&perms)) {
            grants.push((p, s));
        }
    }
    Ok(Some(Principal { name, grants }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_inherit_down_the_tree_segment_wise() {
        let p = |s| ContainerPath::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let who = Principal {
            name: "ci".into(),
            grants: vec![(p("/public"), PermSet::parse("read,use").unwrap_or_default())],
        };
        assert!(who.can(Perm::Read, &p("/public/orders")));
        assert!(!who.can(Perm::Write, &p("/public/orders")));
        assert!(!who.can(Perm::Read, &p("/publicity")));
        assert!(!who.can(Perm::Read, &p("/")));
    }

    #[test]
    fn grant_argument_is_parsed_strictly() {
        assert!(parse_grant("/public=read,write").is_ok());
        assert!(parse_grant("/public=admin").is_err());
        assert!(parse_grant("public=read").is_err());
        assert!(parse_grant("/public").is_err());
    }
}
