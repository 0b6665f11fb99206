//! A clone's own bytes ([`extents::own_bytes`], FIEMAP against its image) kept in the run
//! directory between commands, so that `status` of a room whose clones nothing serves (or
//! the kernel serves) asks the file system again only for clones written since. On xfs,
//! FIEMAP of a clone looks every extent up in the shared-extent tree: about a millisecond
//! for a 20 GiB disk a PC wrote a few MiB into, a quarter of a second for 200 of them.
//!
//! An entry is the clone's and the image's identity and times (device, inode, size,
//! mtime, ctime), when it was counted, and the count. It is used only while both files are
//! exactly as recorded: every write, discard or truncation moves the clone's mtime and
//! ctime. The kernel stamps times from a clock that moves in ticks, so a file written
//! within the last moments could be written again within the same tick without its times
//! moving: such a count is not kept. What changes extents without touching times (a
//! deduplication, btrfs's defragmentation) is caught up with by counting again once an
//! entry is [`MAX_AGE`] old. Nothing here is a record of the room: losing the directory
//! loses nothing, and status keeps entries only in a run directory that is there.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{extents, ReflinkError};

/// How old a file's times must be for a count over it to be kept.
const SETTLED: Duration = Duration::from_secs(2);
/// How long a count stands for a clone whose times have not moved.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// The longest entry read back (a line of numbers).
const ENTRY_MAX: u64 = 512;
const MAGIC: &str = "cowctl-fill 2";

/// Unix time in ns.
fn ns_of(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

fn ns(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

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
        let at = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: at(m.mtime(), m.mtime_nsec()),
            ctime_ns: at(m.ctime(), m.ctime_nsec()),
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
        self.mtime_ns.max(self.ctime_ns) + ns(SETTLED) <= ns_of(now)
    }
}

/// A name for `key` (a PC's name) safe as one file name in the cache directory.
fn file_name(key: &str) -> Option<String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    (!key.is_empty() && !key.starts_with('.') && key.chars().all(ok) && key.len() <= 200)
        .then(|| format!("{key}.fill"))
}

/// [`extents::own_bytes`] of `clone` against `image`, from the entry `key` (the PC's name)
/// in `run_dir/fill` when both files are as it recorded them and it is young, else counted
/// anew (and kept when both files have settled). The cache is best effort: a run directory
/// that is not there or not cowctl's own only means counting every time.
pub fn own_bytes(
    run_dir: &Path,
    key: &str,
    clone: &Path,
    image: &Path,
) -> Result<u64, ReflinkError> {
    // The clock and the times read before counting: a write while counting moves the
    // times, and the next look counts again.
    let now = SystemTime::now();
    let stamps = Stamp::of(clone).ok().zip(Stamp::of(image).ok());
    let dir = run_dir.join("fill");
    // Only a run directory (and cache) that is cowctl's own by the run directory's rule is
    // read or written; status makes the cache's directory, never the run directory.
    let ours = || {
        run_dir.is_dir()
            && crate::base::rundir::ensure(run_dir).is_ok()
            && crate::base::rundir::ensure(&dir).is_ok()
    };
    let usable = match (stamps, file_name(key)) {
        (Some(s), Some(name)) if ours() => Some((s, name)),
        _ => None,
    };
    if let Some(((c, i), name)) = &usable {
        if let Some(own) = read(&dir.join(name), (*c, *i), now) {
            return Ok(own);
        }
    }
    let own = extents::own_bytes(clone, image)?;
    if let Some(((c, i), name)) = &usable {
        if c.settled(now) && i.settled(now) {
            let _ = write(&dir, name, (*c, *i), now, own);
        }
    }
    Ok(own)
}

fn read(path: &Path, (clone, image): (Stamp, Stamp), now: SystemTime) -> Option<u64> {
    // Never through a link, never waiting on a pipe: a regular file only.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    f.take(ENTRY_MAX).read_to_string(&mut text).ok()?;
    let rest = text.trim_end().strip_prefix(MAGIC)?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let [stamps @ .., counted, own] = words.as_slice() else {
        return None;
    };
    if stamps.len() != 10 {
        return None;
    }
    let (was_clone, was_image) = (Stamp::parse(&stamps[..5])?, Stamp::parse(&stamps[5..])?);
    let age = ns_of(now) - counted.parse::<i128>().ok()?;
    (was_clone == clone && was_image == image && (0..ns(MAX_AGE)).contains(&age))
        .then(|| own.parse().ok())
        .flatten()
}

fn write(
    dir: &Path,
    name: &str,
    (clone, image): (Stamp, Stamp),
    counted: SystemTime,
    own: u64,
) -> std::io::Result<()> {
    let line = format!(
        "{MAGIC} {} {} {} {own}\n",
        clone.words().join(" "),
        image.words().join(" "),
        ns_of(counted)
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
    fn an_entry_is_used_only_while_both_files_are_as_recorded_and_it_is_young() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("fill");
        crate::base::rundir::ensure(&dir).unwrap();
        let counted = SystemTime::now();
        let both = (stamp(5), stamp(9));
        write(&dir, "pc-1.fill", both, counted, 123_456).unwrap();
        let path = dir.join("pc-1.fill");
        let soon = counted + Duration::from_secs(1);
        assert_eq!(read(&path, both, soon), Some(123_456));
        assert_eq!(
            read(&path, (stamp(6), stamp(9)), soon),
            None,
            "the clone changed"
        );
        assert_eq!(
            read(&path, (stamp(5), stamp(8)), soon),
            None,
            "the image changed"
        );
        assert_eq!(read(&path, both, counted + MAX_AGE), None, "too old");
        std::fs::write(&path, format!("{MAGIC} 1 2 3\n")).unwrap();
        assert_eq!(read(&path, both, soon), None, "a short entry");
        std::fs::write(&path, "something else\n").unwrap();
        assert_eq!(read(&path, both, soon), None);
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read(&path, both, soon), None, "a pipe, not waited on");
    }

    #[test]
    fn a_file_written_in_the_last_moments_is_not_settled() {
        let now = SystemTime::now();
        let mut s = stamp(1);
        s.mtime_ns = ns_of(now) - 500_000_000;
        s.ctime_ns = s.mtime_ns;
        assert!(!s.settled(now));
        s.mtime_ns = ns_of(now) - 3_000_000_000;
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
