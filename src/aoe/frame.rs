//! An answer frame being built, in a buffer kept from frame to frame, so a read's data goes
//! straight into it without zeroing those bytes first: zeroing a jumbo frame's worth before
//! every read cost as much as a third of the read itself.

/// The frame is `self[..]`; the buffer behind it keeps what earlier frames left past its end.
#[derive(Debug, Default)]
pub struct FrameBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl FrameBuf {
    pub fn with_capacity(n: usize) -> FrameBuf {
        FrameBuf {
            bytes: Vec::with_capacity(n),
            len: 0,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn push(&mut self, b: &[u8]) {
        self.spare(b.len()).copy_from_slice(b);
    }

    /// `n` more bytes at the end of the frame, holding whatever an earlier frame left there:
    /// the caller overwrites them all, or truncates the frame back before it is sent.
    pub fn spare(&mut self, n: usize) -> &mut [u8] {
        let start = self.len;
        let end = start + n;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.len = end;
        &mut self.bytes[start..end]
    }

    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Pads the frame with zeros up to `n` bytes.
    pub fn pad_to(&mut self, n: usize) {
        if self.len < n {
            let more = n - self.len;
            self.spare(more).fill(0);
        }
    }
}

impl std::ops::Deref for FrameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::ops::DerefMut for FrameBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_what_was_pushed_and_padding_is_zero() {
        let mut f = FrameBuf::with_capacity(16);
        f.push(&[7; 40]);
        f.clear();
        f.push(&[1, 2, 3]);
        assert_eq!(&f[..], &[1, 2, 3]);
        f.pad_to(8);
        assert_eq!(
            &f[..],
            &[1, 2, 3, 0, 0, 0, 0, 0],
            "stale bytes never pad a frame"
        );
        f.truncate(2);
        assert_eq!(&f[..], &[1, 2]);
        f.spare(2).copy_from_slice(&[9, 9]);
        assert_eq!(&f[..], &[1, 2, 9, 9]);
    }
}
