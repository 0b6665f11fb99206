//! Reflink storage's file-system facts on real btrfs and xfs, each made on a loop device
//! for the test (as root, as the test command runs): a clone shares every block of its
//! source, a 4 KiB write makes 4 KiB its own, a clone never replaces a file, and a file
//! system that cannot clone (ext4, xfs without reflink) is named with its mount point.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::kernel::Mounted;
use cowctl::reflink::clone::{clone_new, install, partial_path, prepare, probe};
use cowctl::reflink::extents::sharing;
use cowctl::reflink::fs::{self, FsKind};
use cowctl::reflink::ReflinkError;

const MIB: u64 = 1 << 20;

fn btrfs() -> Mounted {
    Mounted::btrfs()
}

fn xfs(reflink: bool) -> Mounted {
    Mounted::xfs(reflink)
}

/// A golden disk of `mib` MiB that is not all one byte, on disk.
fn golden(dir: &Path, mib: u64) -> PathBuf {
    let path = dir.join("golden.img");
    let bytes: Vec<u8> = (0..mib * MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    path
}

fn write_synced(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn a_clone_shares_everything_until_written(m: &Mounted, kind: FsKind) {
    let dir = m.mnt();
    assert_eq!(fs::of(&dir).unwrap().kind, kind);
    assert_eq!(fs::of(&dir).unwrap().mount, dir);
    probe(&dir).unwrap();
    let golden = golden(&dir, 64);
    let disk = dir.join("pc-01.img");
    clone_new(&golden, &disk).unwrap();
    assert!(
        !partial_path(&disk).exists(),
        "the partial clone is renamed"
    );
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        std::fs::read(&golden).unwrap()
    );
    let fresh = sharing(&disk).unwrap();
    assert_eq!(
        fresh.private, 0,
        "{kind}: a fresh clone owns nothing: {fresh:?}"
    );
    assert_eq!(fresh.shared, 64 * MIB, "{kind}: {fresh:?}");

    write_synced(&disk, 5 * MIB + 8192, &[0xEE; 4096]);
    let written = sharing(&disk).unwrap();
    assert_eq!(
        written.private, 4096,
        "{kind}: one block is the PC's own: {written:?}"
    );
    assert_eq!(written.shared, 64 * MIB - 4096, "{kind}: {written:?}");
    if kind == FsKind::Xfs {
        // xfs shares per block; btrfs per extent, and the PC's file still refers to the
        // rest of the golden's extent, so btrfs calls all of it shared.
        let still = sharing(&golden).unwrap();
        assert_eq!(
            still.private, 4096,
            "the golden owns the block the PC replaced"
        );
    }

    let refused = clone_new(&golden, &disk).unwrap_err();
    assert!(matches!(refused, ReflinkError::Exists { .. }), "{refused}");
    let mut back = vec![0u8; 4096];
    std::io::Read::read_exact(
        &mut {
            let mut f = std::fs::File::open(&disk).unwrap();
            f.seek(SeekFrom::Start(5 * MIB + 8192)).unwrap();
            f
        },
        &mut back,
    )
    .unwrap();
    assert_eq!(
        back,
        vec![0xEE; 4096],
        "a refused clone leaves the PC's disk alone"
    );
}

/// A reset's clone is made before the PC's pause and opened inside it: what serves its
/// unwritten blocks is the very file it was cloned from, even when the image's name has
/// been given to another file in between.
#[test]
fn a_clone_made_ahead_keeps_the_image_file_it_was_made_from() {
    use std::os::unix::fs::FileExt;
    let m = xfs(true);
    let dir = m.mnt();
    let image = golden(&dir, 2);
    let before = std::fs::read(&image).unwrap();
    let disk = dir.join("pc-1.img");
    let made = prepare(&image, &disk).unwrap();
    assert_eq!(made.partial, partial_path(&disk));
    assert!(!disk.exists(), "prepare leaves the PC's name alone");
    let other = dir.join("other.img");
    std::fs::write(&other, vec![0xee; before.len()]).unwrap();
    std::fs::rename(&other, &image).unwrap();
    let mut served = vec![0; before.len()];
    made.source.read_exact_at(&mut served, 0).unwrap();
    assert!(served == before, "the source is the file that was cloned");
    install(&made.partial, &disk).unwrap();
    assert!(std::fs::read(&disk).unwrap() == before);
    assert!(!made.partial.exists());
}

#[test]
fn on_btrfs_a_clone_shares_every_block_until_a_block_is_written() {
    a_clone_shares_everything_until_written(&btrfs(), FsKind::Btrfs);
}

#[test]
fn on_xfs_a_clone_shares_every_block_until_a_block_is_written() {
    a_clone_shares_everything_until_written(&xfs(true), FsKind::Xfs);
}

#[test]
fn a_file_system_that_cannot_clone_is_named_with_its_mount() {
    let plain = xfs(false);
    let dir = plain.mnt();
    let err = probe(&dir).unwrap_err();
    assert!(
        matches!(&err, ReflinkError::CannotClone { kind: FsKind::Xfs, mount, .. } if *mount == dir),
        "{err}"
    );
    let golden = golden(&dir, 1);
    let err = clone_new(&golden, &dir.join("pc-01.img")).unwrap_err();
    assert!(matches!(err, ReflinkError::CannotClone { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "{} is on xfs (mounted at {}), which cannot clone files: reflink storage needs btrfs, or xfs made with reflink=1",
            dir.display(),
            dir.display()
        )
    );
    assert!(!dir.join("pc-01.img").exists());
    assert!(!partial_path(&dir.join("pc-01.img")).exists());
}

#[test]
fn a_clone_onto_another_file_system_names_both_mounts() {
    let (a, b) = (btrfs(), xfs(true));
    let golden = golden(&a.mnt(), 1);
    let err = clone_new(&golden, &b.mnt().join("pc-01.img")).unwrap_err();
    assert!(
        matches!(&err, ReflinkError::NotOneFileSystem { source_mount, clone_mount, .. }
            if *source_mount == a.mnt() && *clone_mount == b.mnt()),
        "{err}"
    );
    assert!(!b.mnt().join("pc-01.img").exists());
}
