//! A memory disk that records any I/O outside its bounds, for the protocol tests and the
//! fuzzers of every target.

use std::sync::{Arc, Mutex};

use cowctl::engine::disk::{Disk, DiskError};

pub const DISK_SIZE: u64 = 4 << 20;

/// A memory disk that refuses (and records) any I/O outside its bounds.
#[derive(Default)]
pub struct MemDisk {
    pub bytes: Mutex<Vec<u8>>,
    pub out_of_bounds: Mutex<Vec<(u64, u64)>>,
    pub flushes: Mutex<u32>,
}

/// The disk's first contents, made once: byte i is i % 251. Computed byte by byte for
/// every disk it cost ~3 ms, nearly all of a fuzz input's time; a copy costs a tenth.
static PATTERN: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| (0..DISK_SIZE).map(|i| (i % 251) as u8).collect());

impl MemDisk {
    pub fn new() -> Arc<MemDisk> {
        Arc::new(MemDisk {
            bytes: Mutex::new(PATTERN.clone()),
            ..Default::default()
        })
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, DiskError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= DISK_SIZE => Ok(offset as usize..end as usize),
            _ => {
                self.out_of_bounds
                    .lock()
                    .unwrap()
                    .push((offset, len as u64));
                Err(DiskError::Io)
            }
        }
    }
}

pub struct DiskRef(pub Arc<MemDisk>);

impl Disk for DiskRef {
    fn size(&self) -> u64 {
        DISK_SIZE
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let r = self.0.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0.bytes.lock().unwrap()[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let r = self.0.range(offset, buf.len())?;
        self.0.bytes.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), DiskError> {
        *self.0.flushes.lock().unwrap() += 1;
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        let r = self.0.range(offset, len as usize)?;
        self.0.bytes.lock().unwrap()[r].fill(0);
        Ok(())
    }
}
