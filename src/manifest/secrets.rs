//! Secrets: each PC's CHAP credentials, derived from the manifest's master secret with a
//! keyed hash (so a PC that reads its own boot script learns nothing that opens another
//! PC's disk), and the rule every secret file follows: readable by its owner only, as
//! ssh demands of a private key.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Windows' initiator takes CHAP secrets of 12 to 16 characters; iPXE passes ours on.
pub const DERIVED_LEN: usize = 16;
const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

/// The manifest's `iscsi.chap`: the user names and the master secrets' files.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Chap {
    pub username: String,
    /// The master secret: each PC's own secret is derived from it (below).
    pub secret_file: PathBuf,
    /// The master of the targets' secrets for mutual CHAP, if any.
    pub mutual_secret_file: Option<PathBuf>,
    /// The name targets give in mutual CHAP.
    pub mutual_username: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the {what} file {path} is readable by others (mode {mode:04o}): run chmod 600 {path}"
    )]
    Exposed {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("the {what} in {path} must be {min} to {max} characters on its first line")]
    Length {
        what: &'static str,
        path: PathBuf,
        min: usize,
        max: usize,
    },
    #[error("the {what} in {path} has characters a boot script cannot carry (blanks, $, quotes, backslashes or control characters)")]
    Characters { what: &'static str, path: PathBuf },
}

/// The first line of a secret file that only its owner may read.
pub fn read_private(
    path: &Path,
    what: &'static str,
    min: usize,
    max: usize,
) -> Result<String, SecretError> {
    let read = |source| SecretError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if !(min..=max).contains(&secret.len()) {
        return Err(SecretError::Length {
            what,
            path: path.to_path_buf(),
            min,
            max,
        });
    }
    if !plain(&secret) {
        return Err(SecretError::Characters {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

/// Printable, and nothing iPXE's script language would expand, split or take as a
/// comment.
pub fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b'$' | b'"' | b'\'' | b'\\' | b'`' | b'#')
        })
}

/// One side's CHAP name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub secret: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({:?}, …)", self.username)
    }
}

/// A PC's CHAP: what its initiator proves, and what the target proves back (mutual).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcChap {
    pub initiator: Credential,
    pub target: Option<Credential>,
}

/// The master secrets of the manifest's `iscsi.chap`, read once.
#[derive(Clone)]
pub struct ChapMaster {
    username: String,
    master: String,
    mutual: Option<(String, String)>,
}

impl ChapMaster {
    pub fn read(c: &Chap) -> Result<ChapMaster, SecretError> {
        let master = read_private(&c.secret_file, "CHAP secret", 12, 255)?;
        let mutual = match &c.mutual_secret_file {
            Some(f) => Some((
                c.mutual_username.clone(),
                read_private(f, "mutual CHAP secret", 12, 255)?,
            )),
            None => None,
        };
        Ok(ChapMaster {
            username: c.username.clone(),
            master,
            mutual,
        })
    }

    /// The PC's own credentials.
    pub fn for_pc(&self, pc: &str) -> PcChap {
        PcChap {
            initiator: Credential {
                username: self.username.clone(),
                secret: derive(&self.master, "initiator", pc),
            },
            target: self.mutual.as_ref().map(|(user, master)| Credential {
                username: user.clone(),
                secret: derive(master, "target", pc),
            }),
        }
    }
}

/// HMAC-SHA-256 of the master over a label and the PC's name, as 16 characters that are
/// easy to read aloud (no 0/O, 1/l/I).
pub fn derive(master: &str, role: &str, pc: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(master.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("cowctl chap {role} {pc}").as_bytes());
    let out = mac.finalize().into_bytes();
    out.iter()
        .take(DERIVED_LEN)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn derived_secrets_differ_per_pc_and_role_and_fit_windows() {
        let a = derive("master-secret-1", "initiator", "pc-01");
        assert_eq!(a, derive("master-secret-1", "initiator", "pc-01"));
        assert_ne!(a, derive("master-secret-1", "initiator", "pc-02"));
        assert_ne!(a, derive("master-secret-1", "target", "pc-01"));
        assert_ne!(a, derive("master-secret-2", "initiator", "pc-01"));
        assert_eq!(a.len(), DERIVED_LEN);
        assert!(plain(&a));
    }

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "a-long-enough-secret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private(&f, "CHAP secret", 12, 255).unwrap_err();
        assert!(
            e.to_string().contains("readable by others (mode 0644)"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_private(&f, "CHAP secret", 12, 255).unwrap(),
            "a-long-enough-secret"
        );
        std::fs::write(&f, "short\n").unwrap();
        assert!(read_private(&f, "CHAP secret", 12, 255).is_err());
        std::fs::write(&f, "has $dollar sign\n").unwrap();
        assert!(read_private(&f, "CHAP secret", 12, 255).is_err());
    }
}
