//! A clone's own bytes ([`extents::own_bytes`], FIEMAP against its image) kept in the run
//! directory between commands, so that `status` of a room whose clones nothing serves (or
//! the kernel serves) asks the file system again only for clones written since. On xfs,
//! FIEMAP of a clone looks every extent up in the shared-extent tree: about a millisecond
//! for a 20 GiB disk a PC wrote a few MiB into, a quarter of a second for 200 of them.
//!
//! An entry is the clone's and the image's identity and times (device, inode, size,
//! mtime, ctime), and the count. It is used only while both are exactly as recorded: every
//! write, discard or truncation moves the clone's mtime and ctime. The kernel stamps times
//! from a clock that moves in ticks, so a clone written within the last moments could be
//! written again within the same tick without its times moving: such a clone's count is
//! not kept. Nothing here is a record of the room: losing the directory loses nothing.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{extents, ReflinkError};

/// How old a clone's times must be for its count to be kept.
const SETTLED: Duration = Duration::from_secs(2);
/// The longest entry read back (a line of numbers).
const ENTRY_MAX: u64 = 512;
const MAGIC: &str = "cowctl-fill 1";

/// What a file is now: which one, how long, when last written and changed (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let m = std::fs::metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }

    fn words(&self) -> [String; 5] {
        [
            self.dev.to_string(),
            self.ino.to_string(),
            self.size.to_string(),
            self.mtime_ns.to_string(),
            self.ctime_ns.to_string(),
        ]
    }

    fn parse(words: &[&str]) -> Option<Stamp> {
        match words {
            [dev, ino, size, mtime, ctime] => Some(Stamp {
                dev: dev.parse().ok()?,
                ino: ino.parse().ok()?,
                size: size.parse().ok()?,
                mtime_ns: mtime.parse().ok()?,
                ctime_ns: ctime.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// Last written and changed at least [`SETTLED`] before `now`.
    fn settled(&self, now: SystemTime) -> bool {
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
        let settled_ns = i128::try_from(SETTLED.as_nanos()).unwrap_or(i128::MAX);
        self.mtime_ns.max(self.ctime_ns) + settled_ns <= now_ns
    }
}

/// A name for `key` (a PC's name) safe as one file name in the cache directory.
fn file_name(key: &str) -> Option<String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    (!key.is_empty() && !key.starts_with('.') && key.chars().all(ok) && key.len() <= 200)
        .then(|| format!("{key}.fill"))
}

/// [`extents::own_bytes`] of `clone` against `image`, from the entry `key` (the PC's name)
/// in `run_dir/fill` when both files are as it recorded them, else counted anew (and kept
/// when the clone has settled). The cache is best effort: a directory that cannot be
/// used only means counting every time.
pub fn own_bytes(
    run_dir: &Path,
    key: &str,
    clone: &Path,
    image: &Path,
) -> Result<u64, ReflinkError> {
    let stamps = Stamp::of(clone).ok().zip(Stamp::of(image).ok());
    let dir = run_dir.join("fill");
    let name = file_name(key);
    if let (Some((c, i)), Some(name)) = (stamps, &name) {
        if let Some(own) = read(&dir.join(name), c, i) {
            return Ok(own);
        }
    }
    let own = extents::own_bytes(clone, image)?;
    if let (Some((c, i)), Some(name)) = (stamps, &name) {
        // Times taken before counting: a write while counting moves them, and the next
        // look counts again.
        if c.settled(SystemTime::now()) && crate::base::rundir::ensure(run_dir).is_ok() {
            let _ = write(&dir, name, c, i, own);
        }
    }
    Ok(own)
}

fn read(path: &Path, clone: Stamp, image: Stamp) -> Option<u64> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut text = String::new();
    f.take(ENTRY_MAX).read_to_string(&mut text).ok()?;
    let rest = text.trim_end().strip_prefix(MAGIC)?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let [c @ .., own] = words.as_slice() else {
        return None;
    };
    if c.len() != 10 {
        return None;
    }
    let (was_clone, was_image) = (Stamp::parse(&c[..5])?, Stamp::parse(&c[5..])?);
    (was_clone == clone && was_image == image)
        .then(|| own.parse().ok())
        .flatten()
}

fn write(dir: &Path, name: &str, clone: Stamp, image: Stamp, own: u64) -> std::io::Result<()> {
    crate::base::rundir::ensure(dir).map_err(std::io::Error::other)?;
    let line = format!(
        "{MAGIC} {} {} {own}\n",
        clone.words().join(" "),
        image.words().join(" ")
    );
    // A temporary name of this process's, renamed over the entry: a reader sees a whole
    // line or none, and two commands counting at once do not mix theirs.
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(line.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(n: u64) -> Stamp {
        Stamp {
            dev: n,
            ino: n + 1,
            size: n + 2,
            mtime_ns: i128::from(n) * 10,
            ctime_ns: i128::from(n) * 11,
        }
    }

    #[test]
    fn an_entry_is_used_only_while_both_files_are_as_recorded() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("fill");
        write(&dir, "pc-1.fill", stamp(5), stamp(9), 123_456).unwrap();
        let path = dir.join("pc-1.fill");
        assert_eq!(read(&path, stamp(5), stamp(9)), Some(123_456));
        assert_eq!(read(&path, stamp(6), stamp(9)), None, "the clone changed");
        assert_eq!(read(&path, stamp(5), stamp(8)), None, "the image changed");
        std::fs::write(&path, "cowctl-fill 1 1 2 3\n").unwrap();
        assert_eq!(read(&path, stamp(5), stamp(9)), None, "a short entry");
        std::fs::write(&path, "something else\n").unwrap();
        assert_eq!(read(&path, stamp(5), stamp(9)), None);
    }

    #[test]
    fn a_clone_written_in_the_last_moments_is_not_settled() {
        let now = SystemTime::now();
        let ns = |t: SystemTime| {
            i128::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_nanos()).unwrap()
        };
        let mut s = stamp(1);
        s.mtime_ns = ns(now) - 500_000_000;
        s.ctime_ns = s.mtime_ns;
        assert!(!s.settled(now));
        s.mtime_ns = ns(now) - 3_000_000_000;
        assert!(!s.settled(now), "its ctime is still recent");
        s.ctime_ns = s.mtime_ns;
        assert!(s.settled(now));
    }

    #[test]
    fn only_plain_names_name_entries() {
        assert_eq!(file_name("pc-01").as_deref(), Some("pc-01.fill"));
        assert_eq!(file_name("../x"), None);
        assert_eq!(file_name(".hidden"), None);
        assert_eq!(file_name("a/b"), None);
        assert_eq!(file_name(""), None);
    }
}
