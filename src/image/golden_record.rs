//! Which golden image a COW was made against, recorded beside it (`<cow>.golden`): the
//! image's size and a fingerprint of its content. A COW laid over another image reads as
//! garbage, which is how qcow2 users lose data when a backing file is replaced.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::Error;

type Result<T, E = Error> = std::result::Result<T, E>;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Samples hashed for a fingerprint: spread over the whole image, so a different or
/// rewritten image is caught without reading all of it.
const SAMPLES: u64 = 256;
const SAMPLE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Golden {
    pub image: PathBuf,
    pub size: u64,
    pub fingerprint: String,
    /// How often the COW went back to the golden image, and when last (Unix seconds):
    /// history of this COW, shown by status and the HTTP service.
    #[serde(default)]
    pub resets: u64,
    #[serde(default)]
    pub last_reset: Option<u64>,
    /// For a COW over an image version: that version's exact identity. Records written
    /// before versions had one lack it (see `image::Store::version_of`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionId>,
}

/// Which version a COW lies over: its name and the SHA-256 of its whole disk (none for a
/// version made before versions were hashed, until `cowctl image hash` adds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionId {
    pub name: String,
    #[serde(default)]
    pub sha256: Option<String>,
}

pub fn record_path(cow: &Path) -> PathBuf {
    let mut p = cow.as_os_str().to_owned();
    p.push(".golden");
    PathBuf::from(p)
}

/// Size and sampled SHA-256 of an image (its first and last 4 KiB always included).
pub fn fingerprint(image: &Path) -> Result<Golden> {
    let f = File::open(image).map_err(|source| Error::OpenGolden {
        path: image.to_path_buf(),
        source,
    })?;
    let size = crate::engine::backing::file_or_device_size(&f)?;
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; SAMPLE];
    let last = size.saturating_sub(SAMPLE as u64);
    for i in 0..=SAMPLES {
        let at = if i == SAMPLES {
            last
        } else {
            last / SAMPLES * i
        };
        let n = usize::try_from((size - at).min(SAMPLE as u64)).expect("at most 4 KiB");
        f.read_exact_at(&mut buf[..n], at)
            .map_err(|source| Error::Reading {
                path: image.to_path_buf(),
                source,
            })?;
        h.update(&buf[..n]);
    }
    let fingerprint = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Golden {
        image: image.to_path_buf(),
        size,
        fingerprint,
        resets: 0,
        last_reset: None,
        version: None,
    })
}

/// Writes the record durably: a crash leaves the old one or the new one, never half. A
/// record naming a version is first noted in that version's store, so prune sees the COW.
pub fn write(cow: &Path, golden: &Golden) -> Result<()> {
    if golden.version.is_some() {
        crate::image::users::note(&golden.image, cow)?;
    }
    let p = record_path(cow);
    let text = serde_json::to_string_pretty(golden)? + "\n";
    crate::base::durable::write_atomic_private(&p, text.as_bytes())
        .map_err(|source| Error::Write { path: p, source })
}

/// Counts a reset of `cow` in its record (a COW without one has nothing to count in); when
/// the reset moved the PC to another image version, `onto` is the image it is over now.
pub fn note_reset(cow: &Path, onto: Option<&Golden>) -> Result<()> {
    let mut g = match (read(cow)?, onto) {
        (Some(mut g), Some(new)) => {
            (g.image, g.size, g.fingerprint, g.version) = (
                new.image.clone(),
                new.size,
                new.fingerprint.clone(),
                new.version.clone(),
            );
            g
        }
        (None, Some(new)) => new.clone(),
        (Some(g), None) => g,
        (None, None) => return Ok(()),
    };
    g.resets += 1;
    g.last_reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs());
    write(cow, &g)
}

/// When the record was last written (Unix seconds), if the file system says.
pub fn written(cow: &Path) -> Option<u64> {
    let m = std::fs::metadata(record_path(cow)).ok()?.modified().ok()?;
    m.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

pub fn read(cow: &Path) -> Result<Option<Golden>> {
    let p = record_path(cow);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(
            serde_json::from_str(&t).map_err(|source| Error::NotAGolden { path: p, source })?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read { path: p, source }),
    }
}

/// Refuses a COW that was made against another image than `image`.
pub fn check(pc: &str, cow: &Path, image: &Golden) -> Result<()> {
    let Some(recorded) = read(cow)? else {
        return Ok(());
    };
    if recorded.size != image.size || recorded.fingerprint != image.fingerprint {
        return Err(Error::OtherImage(Box::new(super::error::OtherImage {
            pc: pc.to_string(),
            cow: cow.to_path_buf(),
            recorded_image: recorded.image,
            recorded_size: recorded.size,
            recorded_fingerprint: recorded.fingerprint,
            image: image.image.clone(),
            size: image.size,
            fingerprint: image.fingerprint.clone(),
        })));
    }
    Ok(())
}
