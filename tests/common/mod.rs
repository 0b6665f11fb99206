//! Builders for COW images, shared by the integration tests.
#![allow(dead_code)]
#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

pub mod http;

use cowctl::cow::{DiskException, Geometry, Header};

/// An in-memory COW image of `chunks` chunks with a header and the given area entries.
pub struct CowImage {
    pub geometry: Geometry,
    pub bytes: Vec<u8>,
}

impl CowImage {
    pub fn new(chunk_sectors: u32, chunks: u64) -> Self {
        let geometry = Geometry::new(chunk_sectors).unwrap();
        let mut bytes = vec![0u8; (chunks * geometry.chunk_bytes()) as usize];
        bytes[..16].copy_from_slice(&Header::new(chunk_sectors, true).encode());
        CowImage { geometry, bytes }
    }

    pub fn header(mut self, h: Header) -> Self {
        self.bytes[..16].copy_from_slice(&h.encode());
        self
    }

    /// Puts entry `index` of area `area`.
    pub fn entry(mut self, area: u64, index: u64, old_chunk: u64, new_chunk: u64) -> Self {
        let at = (self.geometry.offset(self.geometry.area_location(area)) + index * 16) as usize;
        DiskException {
            old_chunk,
            new_chunk,
        }
        .encode_into(&mut self.bytes[at..at + 16]);
        self
    }

    /// Fills area `area` completely with entries pointing at its own data chunks.
    pub fn full_area(mut self, area: u64) -> Self {
        let per = self.geometry.exceptions_per_area();
        let first = self.geometry.area_location(area) + 1;
        for i in 0..per {
            self = self.entry(area, i, 1_000_000 + area * per + i, first + i);
        }
        self
    }

    pub fn truncate(mut self, len: usize) -> Self {
        self.bytes.truncate(len);
        self
    }
}
pub mod kernel;
