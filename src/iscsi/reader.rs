//! Reading and writing whole PDUs: framing (BHS, AHS, padded data segment), CRC32C digests
//! when negotiated, and a cap on every length the peer sends before anything is allocated.
//! The reader keeps a partly received PDU across read timeouts, so a connection can wake
//! up to ping an idle initiator without losing its place in the stream.

use std::io::{self, Read, Write};

use super::pdu::{pad_len, Bhs, BHS_LEN};

/// Which digests the connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// A PDU as it lies in the reader's buffer.
#[derive(Debug)]
pub struct PduRef<'a> {
    pub bhs: Bhs,
    pub ahs: &'a [u8],
    pub data: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between PDUs.
    #[error("the initiator closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a PDU.
    #[error("the connection ended in the middle of a PDU")]
    Truncated,
    /// No whole PDU arrived before the socket's read timeout; what came is kept.
    #[error("no PDU arrived in time")]
    TimedOut,
    #[error("a data segment of {len} bytes is over the {max}-byte limit")]
    DataTooLong { len: usize, max: usize },
    /// The header is not to be trusted, nor anything after it: the connection must end.
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The framing is intact; the PDU's data is wrong (the command must be rejected).
    #[error("data digest mismatch")]
    DataDigest(Bhs),
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub struct PduReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The largest data segment accepted (our MaxRecvDataSegmentLength).
    max_data: usize,
    digests: Digests,
}

/// Room for the header, the largest AHS (255 words) and both digests, beside the data.
const OVERHEAD: usize = BHS_LEN + 255 * 4 + 8 + 3;

impl<R: Read> PduReader<R> {
    pub fn new(inner: R, max_data: usize) -> Self {
        PduReader {
            inner,
            buf: vec![0; (OVERHEAD + max_data).max(64 << 10)],
            start: 0,
            end: 0,
            max_data,
            digests: Digests::default(),
        }
    }

    /// After login: the negotiated digests and our declared receive limit.
    pub fn set_limits(&mut self, max_data: usize, digests: Digests) {
        self.max_data = max_data;
        self.digests = digests;
        let want = (OVERHEAD + max_data).max(64 << 10);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// What has been received and not yet read as a PDU (a handover passes it on).
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Puts back bytes received before this reader existed (the previous process's
    /// [`unread`](Self::unread)); refused when they do not fit the buffer.
    pub fn prefill(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        if self.end - self.start + bytes.len() > self.buf.len() {
            return Err(ReadError::DataTooLong {
                len: bytes.len(),
                max: self.buf.len(),
            });
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
        Ok(())
    }

    /// True when a whole PDU is already buffered (no read would block for it).
    pub fn has_pdu(&self) -> bool {
        matches!(self.framed_len(), Some(Ok(n)) if self.end - self.start >= n)
    }

    /// The length of the PDU at the front of the buffer, once its header is there.
    fn framed_len(&self) -> Option<Result<usize, ReadError>> {
        if self.end - self.start < BHS_LEN {
            return None;
        }
        let mut bhs = Bhs::default();
        bhs.0
            .copy_from_slice(&self.buf[self.start..self.start + BHS_LEN]);
        let data = bhs.data_len();
        if data > self.max_data {
            return Some(Err(ReadError::DataTooLong {
                len: data,
                max: self.max_data,
            }));
        }
        let mut n = BHS_LEN + bhs.ahs_len();
        if self.digests.header {
            n += 4;
        }
        if data > 0 {
            n += data + pad_len(data);
            if self.digests.data {
                n += 4;
            }
        }
        Some(Ok(n))
    }

    /// Reads the next PDU. Data segments over the limit end the connection (the framing
    /// cannot be trusted); digests are checked.
    pub fn read_pdu(&mut self) -> Result<PduRef<'_>, ReadError> {
        let total = loop {
            match self.framed_len() {
                Some(Err(e)) => return Err(e),
                Some(Ok(n)) if self.end - self.start >= n => break n,
                Some(Ok(n)) => self.fill(n)?,
                None => self.fill(BHS_LEN)?,
            }
        };
        let at = self.start;
        self.start += total;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let frame = &self.buf[at..at + total];
        let mut bhs = Bhs::default();
        bhs.0.copy_from_slice(&frame[..BHS_LEN]);
        let ahs_end = BHS_LEN + bhs.ahs_len();
        let mut pos = ahs_end;
        if self.digests.header {
            let want = u32::from_le_bytes(frame[pos..pos + 4].try_into().expect("4 bytes"));
            if crc32c::crc32c(&frame[..ahs_end]) != want {
                return Err(ReadError::HeaderDigest);
            }
            pos += 4;
        }
        let len = bhs.data_len();
        let data = &frame[pos..pos + len];
        if len > 0 && self.digests.data {
            let padded = &frame[pos..pos + len + pad_len(len)];
            let at = pos + len + pad_len(len);
            let want = u32::from_le_bytes(frame[at..at + 4].try_into().expect("4 bytes"));
            if crc32c::crc32c(padded) != want {
                return Err(ReadError::DataDigest(bhs));
            }
        }
        Ok(PduRef {
            bhs,
            ahs: &frame[BHS_LEN..ahs_end],
            data,
        })
    }

    /// Reads until at least `want` bytes from `start` are buffered.
    fn fill(&mut self, want: usize) -> Result<(), ReadError> {
        if self.start + want > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < want {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) if self.end == self.start => return Err(ReadError::Closed),
                Ok(0) => return Err(ReadError::Truncated),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ReadError::TimedOut)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Writes PDUs with the connection's digests and padding.
pub struct PduWriter<W> {
    inner: W,
    digests: Digests,
}

const ZEROS: [u8; 4] = [0; 4];

impl<W: Write> PduWriter<W> {
    pub fn new(inner: W) -> Self {
        PduWriter {
            inner,
            digests: Digests::default(),
        }
    }

    pub fn set_digests(&mut self, digests: Digests) {
        self.digests = digests;
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// One PDU: `bhs` must already carry the data segment's length.
    pub fn send(&mut self, bhs: &Bhs, data: &[u8]) -> io::Result<()> {
        debug_assert_eq!(bhs.data_len(), data.len());
        self.send_header(bhs)?;
        self.send_data(&[data])
    }

    /// The header (with its digest) of a PDU whose data follows with `send_data`.
    pub fn send_header(&mut self, bhs: &Bhs) -> io::Result<()> {
        self.inner.write_all(&bhs.0)?;
        if self.digests.header {
            self.inner
                .write_all(&crc32c::crc32c(&bhs.0).to_le_bytes())?;
        }
        Ok(())
    }

    /// A data segment given in pieces, padded, with its digest.
    pub fn send_data(&mut self, pieces: &[&[u8]]) -> io::Result<()> {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        if len == 0 {
            return Ok(());
        }
        let mut crc = 0;
        for p in pieces {
            self.inner.write_all(p)?;
            if self.digests.data {
                crc = crc32c::crc32c_append(crc, p);
            }
        }
        let pad = &ZEROS[..pad_len(len)];
        self.inner.write_all(pad)?;
        if self.digests.data {
            crc = crc32c::crc32c_append(crc, pad);
            self.inner.write_all(&crc.to_le_bytes())?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu_bytes(digests: Digests, data: &[u8]) -> Vec<u8> {
        let mut w = PduWriter::new(Vec::new());
        w.set_digests(digests);
        let mut b = Bhs::default();
        b.0[0] = 0x04;
        b.set_data_len(data.len());
        w.send(&b, data).unwrap();
        w.inner
    }

    #[test]
    fn round_trip_with_and_without_digests() {
        for digests in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let mut bytes = pdu_bytes(digests, b"SendTargets=All\0");
            bytes.extend(pdu_bytes(digests, b"abc"));
            let mut r = PduReader::new(&bytes[..], 8192);
            r.set_limits(8192, digests);
            assert_eq!(r.read_pdu().unwrap().data, b"SendTargets=All\0");
            assert!(r.has_pdu());
            assert_eq!(r.read_pdu().unwrap().data, b"abc");
            assert!(matches!(r.read_pdu(), Err(ReadError::Closed)));
        }
    }

    #[test]
    fn a_bad_digest_or_a_long_segment_is_caught() {
        let d = Digests {
            header: true,
            data: true,
        };
        let mut bytes = pdu_bytes(d, b"abcd");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut r = PduReader::new(&bytes[..], 8192);
        r.set_limits(8192, d);
        assert!(matches!(r.read_pdu(), Err(ReadError::DataDigest(_))));

        let mut bytes = pdu_bytes(d, b"abcd");
        bytes[2] ^= 1;
        let mut r = PduReader::new(&bytes[..], 8192);
        r.set_limits(8192, d);
        assert!(matches!(r.read_pdu(), Err(ReadError::HeaderDigest)));

        let bytes = pdu_bytes(Digests::default(), &[0; 9000]);
        let mut r = PduReader::new(&bytes[..], 8192);
        assert!(matches!(
            r.read_pdu(),
            Err(ReadError::DataTooLong { len: 9000, .. })
        ));
        let mut r = PduReader::new(&bytes[..100], 16384);
        assert!(matches!(r.read_pdu(), Err(ReadError::Truncated)));
    }
}
