//! A reflink PC's disk: a plain disk file, cloned from its version's disk, served as it is.
//! The file system shares every block with the version until the PC writes it, and then
//! copies only the block written, so a first write costs what a rewrite does.
//!
//! What a PC has changed is where its file is no longer its image: the file system can say
//! so (FIEMAP: the same physical blocks at the same offsets), but asking it per request
//! would cost a walk of the file's extents; instead the disk keeps one bit per 4 KiB block
//! that is the PC's own, starting from the extents compared when it was opened and set by
//! each write (and by each discard, whose hole is no longer the image's). The count is the
//! PC's fill, held against its quota (`cow_size`): a write that would take the PC past it
//! gets "no space", as a full COW's does.
//!
//! Reads of blocks that are still the image's are served from the image's file, not the
//! clone's: the file system shares the blocks but not the page cache, and every PC of the
//! room reading its boot files through the one image file reads them from memory once.
//!
//! Durability is the file system's: a completed write is in the page cache, which outlives
//! this process; a flush is `fdatasync`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::ownblocks::{Fill, OwnBlocks};
use super::EngineError;
use crate::cow::Usage;

/// The unit the disk counts a PC's own bytes in: the block btrfs and xfs copy on a write.
pub const BLOCK: u64 = BLOCK_LEN as u64;
const BLOCK_LEN: usize = 4096;
/// The longest stretch of the image's blocks between a PC's own that a read takes from the
/// clone rather than from the image's file.
const SHORT_IMAGE_RUN: usize = 32 << 10;

pub struct CloneFile {
    file: File,
    /// The image the clone was made from (never written): reads of blocks that are not
    /// the PC's own come from here.
    image: File,
    size: u64,
    /// Its own blocks against the most bytes the PC may hold alone.
    fill: Fill,
    abandoned: AtomicBool,
}

impl CloneFile {
    /// Serves `file`, `size` bytes long, a clone of `image` that still is the image in the
    /// whole blocks of `same` (offset, length; from FIEMAP when it is opened) and is the
    /// PC's own everywhere else; `quota` caps the PC's own bytes.
    pub fn new(
        file: File,
        image: File,
        size: u64,
        (read_only, quota): (bool, u64),
        same: &[(u64, u64)],
    ) -> CloneFile {
        let blocks = size.div_ceil(BLOCK);
        let mut own = OwnBlocks::new(blocks);
        own.set(0, blocks, true);
        for &(offset, len) in same {
            let end = offset.saturating_add(len).min(size);
            if offset < end {
                own.set(offset.div_ceil(BLOCK), end / BLOCK, false);
            }
        }
        CloneFile {
            file,
            image,
            size,
            fill: Fill::new(own, BLOCK, size, (read_only, quota)),
            abandoned: AtomicBool::new(false),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The bytes the PC holds alone.
    pub fn own_bytes(&self) -> u64 {
        self.fill.own_bytes()
    }

    /// The fill as `dmsetup status` numbers would give it: own bytes of the quota.
    pub fn usage(&self) -> Usage {
        self.fill.usage()
    }

    /// Raises the quota to `len` bytes (never lowers it); returns the old one.
    pub fn grow(&self, len: u64) -> Result<u64, EngineError> {
        self.fill.grow(len)
    }

    /// The clone is about to be thrown away (a reset): closing it syncs nothing.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), EngineError> {
        self.fill.check_range(offset, buf.len() as u64)?;
        let mut done = 0usize;
        for (from_image, at, len) in self.runs(offset, buf.len()) {
            let seg = &mut buf[done..done + len];
            done += len;
            let (file, what) = if from_image {
                (&self.image, "reading the golden image")
            } else {
                (&self.file, "reading the PC's disk")
            };
            file.read_exact_at(seg, at)
                .map_err(EngineError::io(what, at))?;
        }
        Ok(())
    }

    /// Splits `len` bytes at `offset` into runs (from the image?, offset, length) read
    /// from one file each. A short stretch of the image's blocks beside the PC's own is
    /// read from the clone, which holds the same bytes there: on a disk the PC has written
    /// all over, one read beats many small ones, and the room's shared page cache matters
    /// for the long stretches the PCs boot from.
    pub fn runs(&self, offset: u64, len: usize) -> Vec<(bool, u64, usize)> {
        let mut runs: Vec<(bool, u64, usize)> = Vec::new();
        {
            let own = self.fill.own();
            let mut done = 0usize;
            while done < len {
                let pos = offset + done as u64;
                let within = (pos % BLOCK) as usize; // less than a block
                let n = (BLOCK_LEN - within).min(len - done);
                let from_image = !own.is_set(pos / BLOCK);
                match runs.last_mut() {
                    Some(last) if last.0 == from_image => last.2 += n,
                    _ => runs.push((from_image, pos, n)),
                }
                done += n;
            }
        }
        if runs.len() > 1 {
            for run in runs.iter_mut() {
                // Runs alternate, so every image run here has an own run beside it.
                if run.0 && run.2 < SHORT_IMAGE_RUN {
                    run.0 = false;
                }
            }
            runs.dedup_by(|next, last| {
                let same = last.0 == next.0;
                if same {
                    last.2 += next.2;
                }
                same
            });
        }
        runs
    }

    /// The image's file, where blocks that are not the PC's own are read.
    pub fn image(&self) -> &File {
        &self.image
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), EngineError> {
        let len = buf.len() as u64;
        self.fill.check_writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (first, end) = (offset / BLOCK, (offset + len).div_ceil(BLOCK));
        self.fill.admit(first, end)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(EngineError::io("writing the PC's disk", offset))?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), EngineError> {
        self.file
            .sync_data()
            .map_err(EngineError::io("syncing the PC's disk", 0))
    }

    /// A discard: the whole blocks of the range are punched out (they read as zeros, and
    /// stay the PC's own: the hole is not the image's); partial blocks at its ends are left
    /// as they are. Like a COW's exception, the fill does not drop.
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        self.fill.check_writable(offset, len)?;
        let (first, end) = (offset.div_ceil(BLOCK), (offset + len) / BLOCK);
        if first < end {
            self.fill.admit(first, end)?;
            self.punch(first * BLOCK, (end - first) * BLOCK)?;
        }
        Ok(())
    }

    /// Makes the range read as zeros: whole blocks punched out unless `no_hole`, the rest
    /// (and everything with `no_hole`) written.
    pub fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), EngineError> {
        self.fill.check_writable(offset, len)?;
        let (first, end) = (offset.div_ceil(BLOCK), (offset + len) / BLOCK);
        if no_hole || first >= end {
            return self.write_zero_bytes(offset, len);
        }
        self.write_zero_bytes(offset, first * BLOCK - offset)?;
        self.fill.admit(first, end)?;
        self.punch(first * BLOCK, (end - first) * BLOCK)?;
        self.write_zero_bytes(end * BLOCK, offset + len - end * BLOCK)
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        const PIECE: usize = 1 << 20;
        let zeroes = vec![0u8; usize::try_from(len).map_or(PIECE, |l| l.min(PIECE))];
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).map_or(PIECE, |l| l.min(PIECE));
            self.write_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn punch(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        use nix::fcntl::{fallocate, FallocateFlags};
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let (o, l) = (offset as i64, len as i64);
        fallocate(std::os::fd::AsRawFd::as_raw_fd(&self.file), flags, o, l)
            .map_err(|e| EngineError::io("punching out blocks of the PC's disk", offset)(e.into()))
    }
}

impl Drop for CloneFile {
    /// Closing syncs what a flush would, unless the clone is being thrown away.
    fn drop(&mut self) {
        if !self.abandoned.load(Ordering::Acquire) && !self.fill.read_only() {
            if let Err(e) = self.file.sync_data() {
                tracing::error!("syncing a PC's disk at close failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clone of an image of 0x07s: the clone file is 0x07s too but zeros in the blocks of
    /// `own`, which are the PC's own; all the rest is the image's.
    struct Pair {
        _image: tempfile::NamedTempFile,
        clone: tempfile::NamedTempFile,
        disk: CloneFile,
    }

    fn pair(size: u64, quota: u64, own: &[(u64, u64)]) -> Pair {
        let image = tempfile::NamedTempFile::new().unwrap();
        let mut bytes = vec![7u8; usize::try_from(size).unwrap()];
        std::fs::write(image.path(), &bytes).unwrap();
        for &(o, l) in own {
            let (a, b) = (usize::try_from(o).unwrap(), usize::try_from(o + l).unwrap());
            bytes[a..b].fill(0);
        }
        let clone = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(clone.path(), &bytes).unwrap();
        let mut same = Vec::new();
        let mut at = 0;
        for &(o, l) in own {
            same.push((at, o - at));
            at = o + l;
        }
        same.push((at, size - at));
        let disk = CloneFile::new(
            clone.reopen().unwrap(),
            image.reopen().unwrap(),
            size,
            (false, quota),
            &same,
        );
        Pair {
            _image: image,
            clone,
            disk,
        }
    }

    #[test]
    fn writes_count_each_block_once_and_reads_see_them() {
        let p = pair(1 << 20, 1 << 20, &[]);
        let d = &p.disk;
        d.write_at(&[9u8; 100], 4000).unwrap(); // blocks 0 and 1
        d.write_at(&[8u8; 4096], 4096).unwrap(); // block 1 again
        assert_eq!(d.own_bytes(), 2 * BLOCK);
        let mut back = [0u8; 100];
        d.read_at(&mut back, 4000).unwrap();
        assert_eq!(back[..96], [9u8; 96]);
        assert_eq!(back[96..], [8u8; 4]);
        assert_eq!(d.usage().sectors_allocated, 16);
        assert_eq!(d.usage().total_sectors, 2048);
    }

    #[test]
    fn blocks_still_the_images_are_read_from_the_image() {
        let p = pair(64 << 10, 1 << 20, &[(8192, 4096)]);
        let d = &p.disk;
        // Were block 8 read from the clone file, this would show.
        p.clone
            .as_file()
            .write_all_at(&[0xEE; 4096], 32768)
            .unwrap();
        let mut all = vec![1u8; 64 << 10];
        d.read_at(&mut all, 0).unwrap();
        assert!(all[..8192].iter().all(|&b| b == 7), "the image's");
        assert!(all[8192..12288].iter().all(|&b| b == 0), "the clone's own");
        assert!(all[12288..].iter().all(|&b| b == 7));
        assert_eq!(
            d.runs(4000, 9000),
            [(false, 4000, 9000)],
            "short stretches of the image beside the PC's own are read from the clone"
        );
        assert_eq!(
            d.runs(0, 64 << 10),
            [(false, 0, 12288), (true, 12288, 53248)],
            "a long stretch is the image's"
        );
        assert_eq!(d.runs(12288, 8192), [(true, 12288, 8192)]);
        d.write_at(&[5u8; 10], 20000).unwrap();
        let mut b = [0u8; 4096];
        d.read_at(&mut b, 16384).unwrap();
        assert_eq!(
            b[3616..3626],
            [5u8; 10],
            "a write makes its block the clone's"
        );
        assert_eq!(
            b[0], 7,
            "the rest of that block is the clone file's, still the image"
        );
    }

    #[test]
    fn the_quota_refuses_new_blocks_but_not_rewrites() {
        let p = pair(1 << 20, 2 * BLOCK, &[(0, 4096)]);
        let d = &p.disk;
        assert_eq!(d.own_bytes(), BLOCK, "what was the PC's at open counts");
        d.write_at(&[1u8; 4096], 8192).unwrap();
        let full = d.write_at(&[1u8; 1], 3 * 4096);
        assert!(
            matches!(full, Err(EngineError::Quota { bytes: 8192 })),
            "{full:?}"
        );
        d.write_at(&[2u8; 4096], 0).unwrap();
        assert_eq!(d.grow(3 * BLOCK).unwrap(), 2 * BLOCK);
        d.write_at(&[1u8; 1], 3 * 4096).unwrap();
        assert_eq!(d.own_bytes(), 3 * BLOCK);
    }

    #[test]
    fn zeroed_and_discarded_blocks_read_as_zeros_not_as_the_image() {
        let p = pair(1 << 20, 1 << 20, &[]);
        let d = &p.disk;
        d.write_zeroes(10, 3 * 4096 - 20, false).unwrap();
        let mut all = vec![1u8; 3 * 4096];
        d.read_at(&mut all, 0).unwrap();
        assert_eq!(all[..10], [7u8; 10]);
        assert!(all[10..3 * 4096 - 10].iter().all(|&x| x == 0));
        assert_eq!(all[3 * 4096 - 10..], [7u8; 10]);
        d.trim(8 * 4096, 4096).unwrap();
        let mut b = [1u8; 4096];
        d.read_at(&mut b, 8 * 4096).unwrap();
        assert_eq!(b, [0u8; 4096], "a discarded block is a hole of the clone's");
        assert_eq!(d.own_bytes(), 4 * BLOCK);
        let _ = &p.clone;
    }

    #[test]
    fn out_of_range_and_read_only_are_refused() {
        let p = pair(8192, 8192, &[]);
        assert!(matches!(
            p.disk.write_at(&[0u8; 2], 8191),
            Err(EngineError::OutOfRange { .. })
        ));
        let ro = CloneFile::new(
            p.clone.reopen().unwrap(),
            p.clone.reopen().unwrap(),
            8192,
            (true, 8192),
            &[],
        );
        assert!(matches!(
            ro.write_at(&[0u8; 1], 0),
            Err(EngineError::ReadOnly)
        ));
        assert!(matches!(ro.grow(1 << 20), Err(EngineError::ReadOnly)));
    }
}
