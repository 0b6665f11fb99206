//! SCSI on LUN 0 (SPC-4 / SBC-3, 512-byte blocks) over a [`Disk`]: what each command
//! does, apart from how iSCSI carries its data. Every range is checked against the
//! capacity before the disk sees it; data-out commands are fed piece by piece as their
//! data arrives, so no buffer is sized by a CDB.

pub mod cdb;
pub mod inquiry;
pub mod mode;
pub mod sense;

use std::sync::{Arc, Mutex};

pub use crate::engine::disk::{Disk, DiskError};
pub use cdb::{DataOut, Op, Range};
pub use inquiry::Identity;
pub use sense::{status, Sense};

/// The logical block size, 512 bytes: what a BIOS boots from.
pub const BLOCK_LEN: u32 = 512;
pub const BLOCK: u64 = BLOCK_LEN as u64;

/// `len`, or `max` when it is larger (a piece of a longer transfer).
pub fn piece(len: u64, max: usize) -> usize {
    usize::try_from(len).map_or(max, |l| l.min(max))
}
/// The largest parameter list kept in memory (UNMAP with every descriptor allowed).
pub const MAX_PARAMETER_LIST: u64 = 8 + 16 * MAX_UNMAP_DESCRIPTORS as u64;
const MAX_UNMAP_DESCRIPTORS: u32 = 256;

/// Numbers the block limits page reports and the commands enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub optimal_granularity: u32,
    pub max_transfer_blocks: u32,
    pub optimal_transfer_blocks: u32,
    pub max_unmap_blocks: u32,
    pub max_unmap_descriptors: u32,
    pub max_write_same_blocks: u32,
}

impl Limits {
    fn of(disk: &dyn Disk) -> Limits {
        Limits {
            optimal_granularity: u32::try_from(disk.granularity() / BLOCK)
                .unwrap_or(8)
                .max(1),
            // 32 MiB per command, 1 MiB preferred.
            max_transfer_blocks: 65536,
            optimal_transfer_blocks: 2048,
            max_unmap_blocks: 1 << 20,
            max_unmap_descriptors: MAX_UNMAP_DESCRIPTORS,
            max_write_same_blocks: 1 << 22,
        }
    }
}

/// An I_T nexus: one session (initiator name + ISID) as SPC-2 reservations see it.
pub type Nexus = u64;

/// What a command ends with, when not GOOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Check(Sense),
    ReservationConflict,
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Self {
        Failure::Check(s)
    }
}

/// The data a command returns.
#[derive(Debug, PartialEq, Eq)]
pub enum DataIn {
    None,
    Bytes(Vec<u8>),
    /// `len` bytes of the disk from `offset`, read as they are sent.
    Disk {
        offset: u64,
        len: u64,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Done {
    pub status: u8,
    pub data: DataIn,
}

impl Done {
    fn good(data: DataIn) -> Done {
        Done {
            status: status::GOOD,
            data,
        }
    }

    fn bytes(mut v: Vec<u8>, alloc: u32) -> Done {
        v.truncate(alloc as usize);
        Done::good(DataIn::Bytes(v))
    }
}

/// The SPC-2 reservation of a logical unit, shared by every session to it.
#[derive(Debug, Default)]
pub struct Reservation(Mutex<Option<Nexus>>);

impl Reservation {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Nexus>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A logical unit as one session sees it: the disk, its identity, and the reservation
/// that all sessions to it share.
pub struct Lu {
    pub identity: Identity,
    reservation: Arc<Reservation>,
    limits: Limits,
    pub disk: Box<dyn Disk>,
}

fn read_error(e: DiskError) -> Sense {
    match e {
        DiskError::Io | DiskError::NoSpace | DiskError::ReadOnly => Sense::UNRECOVERED_READ_ERROR,
    }
}

pub fn write_error(e: DiskError) -> Sense {
    match e {
        DiskError::NoSpace => Sense::SPACE_ALLOCATION_FAILED,
        DiskError::ReadOnly => Sense::WRITE_PROTECTED,
        DiskError::Io => Sense::WRITE_ERROR,
    }
}

impl Lu {
    pub fn new(identity: Identity, reservation: Arc<Reservation>, disk: Box<dyn Disk>) -> Lu {
        let limits = Limits::of(disk.as_ref());
        Lu {
            identity,
            reservation,
            limits,
            disk,
        }
    }

    fn blocks(&self) -> u64 {
        self.disk.size() / BLOCK
    }

    /// The session has ended: a reservation it held goes with it.
    pub fn nexus_lost(&self, nexus: Nexus) {
        let mut r = self.reservation.lock();
        if *r == Some(nexus) {
            *r = None;
        }
    }

    /// LOGICAL UNIT RESET: reservations are released.
    pub fn reset(&self) {
        *self.reservation.lock() = None;
    }

    fn range(&self, r: Range) -> Result<(u64, u64), Sense> {
        match r.lba.checked_add(u64::from(r.blocks)) {
            Some(end) if end <= self.blocks() => Ok((r.lba * BLOCK, u64::from(r.blocks) * BLOCK)),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn writable(&self) -> Result<(), Sense> {
        if self.disk.read_only() {
            Err(Sense::WRITE_PROTECTED)
        } else {
            Ok(())
        }
    }

    /// Checks a command before its data is taken: reservation, range, write protection,
    /// transfer limits.
    pub fn check(&self, op: &Op, nexus: Nexus) -> Result<(), Failure> {
        let held = *self.reservation.lock();
        if held.is_some_and(|h| h != nexus) && !op.passes_reservation() {
            return Err(Failure::ReservationConflict);
        }
        match *op {
            Op::Read { range, .. } | Op::Verify { range, .. } | Op::PreFetch { range } => {
                self.range(range)?;
                self.transfer_limit(range)?;
            }
            Op::Write { range, .. } | Op::WriteVerify { range } => {
                self.range(range)?;
                self.transfer_limit(range)?;
                self.writable()?;
            }
            Op::SyncCache { range } => {
                self.range(range)?;
            }
            Op::WriteSame { range, .. } => {
                if range.blocks == 0 {
                    return Err(Sense::invalid_cdb_field(
                        if range.lba > u32::MAX as u64 { 10 } else { 7 },
                        None,
                    )
                    .into());
                }
                if range.blocks > self.limits.max_write_same_blocks {
                    return Err(Sense::INVALID_FIELD_IN_CDB.into());
                }
                self.range(range)?;
                self.writable()?;
            }
            Op::Unmap { param_len } => {
                self.writable()?;
                if u64::from(param_len) > MAX_PARAMETER_LIST {
                    return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn transfer_limit(&self, range: Range) -> Result<(), Sense> {
        if range.blocks > self.limits.max_transfer_blocks {
            return Err(Sense::invalid_cdb_field(7, None));
        }
        Ok(())
    }

    /// Runs a command that takes no data from the initiator. `check` has passed.
    pub fn execute(&self, op: &Op, nexus: Nexus, lun_exists: bool) -> Result<Done, Failure> {
        if !lun_exists {
            return without_lun(op);
        }
        Ok(match *op {
            Op::TestUnitReady | Op::StartStopUnit | Op::PreventAllow => Done::good(DataIn::None),
            Op::RequestSense { desc, alloc } => {
                Done::bytes(request_sense(Sense::NO_SENSE, desc), alloc)
            }
            Op::Inquiry {
                evpd: false, alloc, ..
            } => Done::bytes(inquiry::standard(true), alloc),
            Op::Inquiry { page, alloc, .. } => {
                let d = inquiry::vpd(page, &self.identity, &self.limits)
                    .ok_or_else(|| Sense::invalid_cdb_field(2, None))?;
                Done::bytes(d, alloc)
            }
            Op::ReportLuns { alloc } => Done::bytes(report_luns(), alloc),
            Op::ReadCapacity10 => self.read_capacity_10(),
            Op::ReadCapacity16 { alloc } => self.read_capacity_16(alloc),
            Op::GetLbaStatus { lba, alloc } => self.get_lba_status(lba, alloc)?,
            Op::ReportSupportedOpcodes { .. } => return Err(Sense::INVALID_OPCODE.into()),
            Op::Read { range, fua: _ } => {
                let (offset, len) = self.range(range)?;
                Done::good(DataIn::Disk { offset, len })
            }
            Op::Verify {
                range,
                bytchk: false,
            } => self.verify_medium(range)?,
            Op::SyncCache { .. } => {
                self.disk.flush().map_err(write_error)?;
                Done::good(DataIn::None)
            }
            Op::PreFetch { range } => self.pre_fetch(range)?,
            Op::WriteSame {
                range, ndob: true, ..
            } => self.write_same_zeroes(range)?,
            Op::ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
            } => Done::bytes(
                mode::sense(self.mode_disk(), ten, dbd, llbaa, pc, page, subpage)?,
                alloc,
            ),
            Op::Reserve => self.reserve(nexus)?,
            Op::Release => {
                self.nexus_lost(nexus);
                Done::good(DataIn::None)
            }
            Op::ReadDefectData { ten, alloc } => {
                // No defects: a header with an empty list, in the format asked for.
                let d = if ten { vec![0, 0, 0, 0] } else { vec![0; 8] };
                Done::bytes(d, alloc)
            }
            // Data-out commands come through `finish` instead.
            Op::Write { .. }
            | Op::WriteVerify { .. }
            | Op::Verify { bytchk: true, .. }
            | Op::WriteSame { .. }
            | Op::Unmap { .. }
            | Op::ModeSelect { .. } => return Err(Sense::INTERNAL_TARGET_FAILURE.into()),
        })
    }

    fn read_capacity_10(&self) -> Done {
        let last = self.blocks().saturating_sub(1);
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
        d.extend_from_slice(&BLOCK_LEN.to_be_bytes());
        Done::good(DataIn::Bytes(d))
    }

    fn read_capacity_16(&self, alloc: u32) -> Done {
        let mut d = vec![0u8; 32];
        d[..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&BLOCK_LEN.to_be_bytes());
        // One logical block per physical block: GET LBA STATUS answers per block.
        d[14] = 0x80; // LBPME: thin provisioned, UNMAP works
        Done::bytes(d, alloc)
    }

    fn get_lba_status(&self, lba: u64, alloc: u32) -> Result<Done, Failure> {
        if lba >= self.blocks() {
            return Err(Sense::LBA_OUT_OF_RANGE.into());
        }
        let mut d = vec![0u8; 24];
        d[..4].copy_from_slice(&20u32.to_be_bytes());
        d[8..16].copy_from_slice(&lba.to_be_bytes());
        let count = u32::try_from(self.blocks() - lba).unwrap_or(u32::MAX);
        d[16..20].copy_from_slice(&count.to_be_bytes());
        // Provisioning status 0: mapped (or the golden image shows through).
        Ok(Done::bytes(d, alloc))
    }

    /// VERIFY with BYTCHK 0: the medium is checked; reading it is the check.
    fn verify_medium(&self, range: Range) -> Result<Done, Failure> {
        let (offset, len) = self.range(range)?;
        self.read_check(offset, len)?;
        Ok(Done::good(DataIn::None))
    }

    fn pre_fetch(&self, range: Range) -> Result<Done, Failure> {
        self.range(range)?;
        // The data is in the page cache or the disk's reach: CONDITION MET says the cache
        // has room for it.
        Ok(Done {
            status: status::CONDITION_MET,
            data: DataIn::None,
        })
    }

    /// WRITE SAME with NDOB: zeroes, no data sent.
    fn write_same_zeroes(&self, range: Range) -> Result<Done, Failure> {
        let (offset, len) = self.range(range)?;
        self.disk.write_zeroes(offset, len).map_err(write_error)?;
        Ok(Done::good(DataIn::None))
    }

    /// The disk as MODE SENSE describes it.
    fn mode_disk(&self) -> mode::Disk {
        mode::Disk {
            blocks: self.blocks(),
            block_len: BLOCK_LEN,
            read_only: self.disk.read_only(),
        }
    }

    /// RESERVE (6)/(10): taken, or kept by the nexus that holds it.
    fn reserve(&self, nexus: Nexus) -> Result<Done, Failure> {
        let mut r = self.reservation.lock();
        match *r {
            Some(h) if h != nexus => return Err(Failure::ReservationConflict),
            _ => *r = Some(nexus),
        }
        Ok(Done::good(DataIn::None))
    }

    fn read_check(&self, offset: u64, len: u64) -> Result<(), Sense> {
        let mut buf = vec![0u8; piece(len, 1 << 20)];
        let mut at = 0;
        while at < len {
            let n = piece(len - at, buf.len());
            self.disk
                .read_at(&mut buf[..n], offset + at)
                .map_err(read_error)?;
            at += n as u64;
        }
        Ok(())
    }

    /// One piece of a WRITE's data, at `offset` bytes into the disk.
    pub fn write_piece(&self, offset: u64, data: &[u8]) -> Result<(), Sense> {
        self.disk.write_at(data, offset).map_err(write_error)
    }

    /// One piece of a VERIFY's data: the index of the first byte that differs, if any.
    pub fn compare_piece(&self, offset: u64, data: &[u8]) -> Result<Option<usize>, Sense> {
        let mut disk = vec![0u8; data.len()];
        self.disk.read_at(&mut disk, offset).map_err(read_error)?;
        Ok(disk.iter().zip(data).position(|(a, b)| a != b))
    }

    /// Ends a data-out command once its data is in: `buffered` holds a parameter list or
    /// WRITE SAME's block; streamed data has been written or compared already.
    pub fn finish(
        &self,
        op: &Op,
        buffered: &[u8],
        miscompare: Option<u64>,
    ) -> Result<Done, Failure> {
        match *op {
            Op::Write { fua: true, .. } | Op::WriteVerify { .. } => {
                self.disk.flush().map_err(write_error)?
            }
            Op::Verify { .. } => {
                if let Some(at) = miscompare {
                    let info = u32::try_from(at).unwrap_or(u32::MAX);
                    return Err(Sense::MISCOMPARE_DURING_VERIFY
                        .with_information(info)
                        .into());
                }
            }
            Op::WriteSame { range, unmap, .. } => {
                let (offset, len) = self.range(range)?;
                if buffered.len() as u64 != BLOCK {
                    return Err(Sense::INVALID_FIELD_IN_CDB.into());
                }
                if buffered.iter().all(|&b| b == 0) {
                    // Zeros, with or without UNMAP: nothing is allocated where the golden
                    // image is zero already.
                    let _ = unmap;
                    self.disk.write_zeroes(offset, len).map_err(write_error)?;
                } else {
                    self.write_same(offset, len, buffered)?;
                }
            }
            Op::Unmap { .. } => self.unmap(buffered)?,
            _ => {}
        }
        Ok(Done::good(DataIn::None))
    }

    fn write_same(&self, offset: u64, len: u64, block: &[u8]) -> Result<(), Sense> {
        let piece: Vec<u8> = block
            .iter()
            .copied()
            .cycle()
            .take(piece(len, 1 << 20))
            .collect();
        let mut at = 0;
        while at < len {
            let n = self::piece(len - at, piece.len());
            self.disk
                .write_at(&piece[..n], offset + at)
                .map_err(write_error)?;
            at += n as u64;
        }
        Ok(())
    }

    fn unmap(&self, list: &[u8]) -> Result<(), Sense> {
        if list.is_empty() {
            return Ok(());
        }
        if list.len() < 8 {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let data_len = usize::from(u16::from_be_bytes([list[0], list[1]]));
        let desc_len = usize::from(u16::from_be_bytes([list[2], list[3]]));
        if data_len + 2 > list.len() || desc_len + 8 > list.len() || desc_len % 16 != 0 {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        if desc_len / 16 > self.limits.max_unmap_descriptors as usize {
            return Err(Sense::invalid_parameter_field(2));
        }
        let mut ranges = Vec::new();
        let mut total = 0u64;
        for d in list[8..8 + desc_len].chunks_exact(16) {
            let lba = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
            let blocks = u32::from_be_bytes(d[8..12].try_into().expect("4 bytes"));
            total += u64::from(blocks);
            if total > u64::from(self.limits.max_unmap_blocks) {
                return Err(Sense::invalid_parameter_field(8));
            }
            ranges.push(self.range(Range { lba, blocks })?);
        }
        for (offset, len) in ranges {
            if len > 0 {
                self.disk.trim(offset, len).map_err(write_error)?;
            }
        }
        Ok(())
    }
}

fn report_luns() -> Vec<u8> {
    // One LUN: 0.
    let mut d = vec![0u8; 16];
    d[3] = 8;
    d
}

/// What a LUN that does not exist answers: INQUIRY (peripheral qualifier 3), REPORT LUNS
/// and REQUEST SENSE; anything else is LOGICAL UNIT NOT SUPPORTED.
fn without_lun(op: &Op) -> Result<Done, Failure> {
    match *op {
        Op::Inquiry {
            evpd: false, alloc, ..
        } => Ok(Done::bytes(inquiry::standard(false), alloc)),
        Op::ReportLuns { alloc } => Ok(Done::bytes(report_luns(), alloc)),
        Op::RequestSense { desc, alloc } => Ok(Done::bytes(
            request_sense(Sense::LUN_NOT_SUPPORTED, desc),
            alloc,
        )),
        _ => Err(Sense::LUN_NOT_SUPPORTED.into()),
    }
}

fn request_sense(s: Sense, desc: bool) -> Vec<u8> {
    if desc {
        s.descriptor().to_vec()
    } else {
        s.fixed().to_vec()
    }
}
