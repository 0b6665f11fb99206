//! What a file on disk is, before cowctl writes to it as a COW: one with a snapshot header,
//! a fresh file with no data (what `cow create`, a reset and the kernel start from), or
//! something else — then a sentence saying what it looks like, and cowctl leaves it alone.
//! This is what stands between a typo in the manifest and a wiped golden image.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::cow::SNAP_MAGIC;

/// Zeros read before a file that has data but no header is called something else: a COW
/// that cowctl made is sparse, so it has none.
const MAX_ZERO_SCAN: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Starts with the snapshot magic `SnAp`.
    Cow,
    /// Reads as zeros and holds no data (or only zeros): a new snapshot starts in it.
    Fresh,
    /// Anything else, described ("a disk image with a boot sector (MBR)").
    Other(String),
}

/// Looks at `path`, reading at most its header and the data regions up to 64 MiB.
pub fn classify(path: &Path) -> io::Result<Kind> {
    let f = File::open(path)?;
    let len = crate::engine::backing::file_or_device_size(&f)?;
    let mut head = [0u8; 4096];
    let n = read_up_to(&f, &mut head, 0)?;
    let head = &head[..n];
    if head.len() >= 4 && u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) == SNAP_MAGIC {
        return Ok(Kind::Cow);
    }
    if head.iter().any(|&b| b != 0) {
        return Ok(Kind::Other(describe(head)));
    }
    Ok(match scan(&f, len)? {
        Scan::Zeros => Kind::Fresh,
        Scan::DataAt(at) => Kind::Other(format!(
            "a file whose first bytes are zero but which holds data at byte {at} (a COW in use starts with its header)"
        )),
        Scan::TooMuch => Kind::Other(format!(
            "a file of more than {} MiB of written zeros (a COW cowctl made is sparse)",
            MAX_ZERO_SCAN >> 20
        )),
    })
}

/// Processes other than this one that have `path` open, as "pid (command)".
pub fn open_by(path: &Path) -> io::Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(path)?;
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for proc in std::fs::read_dir("/proc")?.flatten() {
        let pid = proc.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path())
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        });
        if holds {
            let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
            out.push(format!("{pid} ({})", comm.trim()));
        }
    }
    Ok(out)
}

enum Scan {
    Zeros,
    DataAt(u64),
    TooMuch,
}

/// Reads the data regions of the file (a sparse file has none at all) for a non-zero byte.
fn scan(f: &File, len: u64) -> io::Result<Scan> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let mut at: i64 = 0;
    let mut scanned = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while at < end {
        let data = match lseek(f.as_raw_fd(), at, Whence::SeekData) {
            Ok(d) => d,
            // No data after `at`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => return Ok(Scan::Zeros),
            // No SEEK_DATA here: read everything (up to the cap) instead.
            Err(nix::errno::Errno::EINVAL) => at,
            Err(e) => return Err(e.into()),
        };
        let hole = match lseek(f.as_raw_fd(), data, Whence::SeekHole) {
            Ok(h) => h,
            Err(_) => end,
        };
        let mut pos = data;
        while pos < hole {
            if scanned >= MAX_ZERO_SCAN {
                return Ok(Scan::TooMuch);
            }
            let want = usize::try_from((hole - pos).min(buf.len() as i64)).unwrap_or(buf.len());
            let got = read_up_to(f, &mut buf[..want], u64::try_from(pos).unwrap_or(0))?;
            if got == 0 {
                break;
            }
            if let Some(i) = buf[..got].iter().position(|&b| b != 0) {
                return Ok(Scan::DataAt(u64::try_from(pos).unwrap_or(0) + i as u64));
            }
            pos += i64::try_from(got).unwrap_or(i64::MAX);
            scanned += got as u64;
        }
        at = hole.max(at + 1);
    }
    Ok(Scan::Zeros)
}

fn read_up_to(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What the first bytes (not all zero) say the file is.
fn describe(head: &[u8]) -> String {
    let at = |off: usize, sig: &[u8]| head.get(off..off + sig.len()) == Some(sig);
    let what = if at(0, b"QFI\xfb") {
        "a qcow2 image".to_string()
    } else if at(512, b"EFI PART") {
        "a disk image with a GPT partition table".to_string()
    } else if at(3, b"NTFS    ") {
        "an NTFS file system".to_string()
    } else if at(1080, &[0x53, 0xef]) {
        "an ext2/3/4 file system".to_string()
    } else if at(510, &[0x55, 0xaa]) {
        "a disk image with a boot sector (MBR)".to_string()
    } else if at(0, b"\x7fELF") {
        "a program (ELF)".to_string()
    } else {
        let magic = u32::from_le_bytes(head[..4.min(head.len())].try_into().unwrap_or([0; 4]));
        format!("a file that does not start with a snapshot header (magic 0x{magic:08x})")
    };
    what
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, bytes: &[u8], len: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f.set_len(len).unwrap();
        p
    }

    #[test]
    fn tells_cows_fresh_files_and_images_apart() {
        let d = tempfile::tempdir().unwrap();
        let d = d.path();
        assert_eq!(
            classify(&file(d, "cow", &SNAP_MAGIC.to_le_bytes(), 1 << 20)).unwrap(),
            Kind::Cow
        );
        assert_eq!(
            classify(&file(d, "sparse", &[], 64 << 20)).unwrap(),
            Kind::Fresh
        );
        assert_eq!(classify(&file(d, "empty", &[], 0)).unwrap(), Kind::Fresh);
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let Kind::Other(what) = classify(&file(d, "mbr", &mbr, 8 << 20)).unwrap() else {
            panic!()
        };
        assert!(what.contains("boot sector"), "{what}");
        // An image whose first bytes are zero but that has data further on.
        let p = file(d, "late", &[], 8 << 20);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all_at(b"data", 5 << 20)
            .unwrap();
        let Kind::Other(what) = classify(&p).unwrap() else {
            panic!()
        };
        assert!(what.contains("holds data at byte 5242880"), "{what}");
        // Written zeros (a file system without holes) are still fresh.
        assert_eq!(
            classify(&file(d, "zeros", &vec![0; 1 << 20], 1 << 20)).unwrap(),
            Kind::Fresh
        );
    }
}
