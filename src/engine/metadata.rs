//! The allocator and commit protocol of the persistent store, in the kernel's order:
//! data chunks are written first; then, per batch, the next area is zeroed if the current
//! one is full, the device is flushed, the area is written, and the device is flushed again.
//! Writers that commit while others are still copying wait for the last one, which commits
//! the whole batch with one pair of flushes (the kernel's `pending_count`).
//!
//! With [`CommitMode::OnFlush`] new exceptions are only recorded in memory and written at the
//! next flush, which is the contract of NBD (and of a disk's write cache): a write is durable
//! once a flush that started after it completes. Those flushes are group commits: one at a
//! time writes a copy of everything recorded so far without holding the metadata lock, and
//! flushes queued behind it that it covered return at once. The flush keeps every crash
//! point loadable: data, flush, the areas after the first unsealed one (and the empty area
//! that follows the last full one), flush, then the first unsealed area — until it is on
//! disk the kernel stops reading there and never sees the later areas — and a last flush.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::error::EngineError;
use crate::base::units::SECTOR;
use crate::cow::{
    DiskException, Geometry, Header, LoadedStore, OverflowPolicy, Usage, DISK_EXCEPTION_SIZE,
    HEADER_SIZE,
};
use crate::engine::backing::Backing;

/// When a new exception reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitMode {
    /// Before the write that made it completes, as in the kernel.
    #[default]
    PerWrite,
    /// At the next flush: a write is durable once a later flush completes.
    OnFlush,
}

/// The snapshot's state, as the kernel's status line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    Active,
    Overflow,
    Invalid,
}

const ACTIVE: u8 = 0;
const OVERFLOW: u8 = 1;
const INVALID: u8 = 2;

/// Auto-extend inside the engine: a COW that is full grows at once (by `step_percent` of
/// its size, in whole chunks, up to `max_bytes`) instead of overflowing. The service's
/// watcher grows it earlier, at the threshold; this is for writers faster than the watcher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrowPolicy {
    pub step_percent: f64,
    pub max_bytes: u64,
}

impl GrowPolicy {
    /// The size after one step from `current` bytes, or None at the maximum.
    pub fn next_size(&self, current: u64, chunk: u64) -> Option<u64> {
        let max = self.max_bytes / chunk * chunk;
        if current >= max {
            return None;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let step = ((current as f64) * self.step_percent / 100.0) as u64;
        let want = current.saturating_add(step.max(chunk)).div_ceil(chunk) * chunk;
        Some(want.min(max))
    }
}

pub(super) struct Metadata {
    geometry: Geometry,
    policy: OverflowPolicy,
    grow: Option<GrowPolicy>,
    mode: CommitMode,
    /// Grows (never shrinks) while the engine runs: see `grow`.
    cow_bytes: AtomicU64,
    state: AtomicU8,
    inner: Mutex<Inner>,
    committed: Condvar,
    /// OnFlush: held by the one writer committing, with the count of recorded entries on
    /// disk (see `write_recorded`). Taken before `inner`, never after.
    gate: Mutex<u64>,
}

struct Inner {
    next_free: u64,
    current_area: u64,
    current_committed: u64,
    area: Vec<u8>,
    zeroes: Vec<u8>,
    pending: u64,
    generation: u64,
    last_batch_ok: bool,
    invalid_persisted: bool,
    /// OnFlush: areas filled in memory and not yet written, oldest first.
    sealed: Vec<(u64, Vec<u8>)>,
    /// OnFlush: entries recorded so far; the commit gate holds how many of them are on disk.
    recorded: u64,
    /// OnFlush: the current area is on disk whole, with this many entries; None until a
    /// commit has written it whole.
    current_written: Option<u64>,
    /// The COW file's space is taken (fallocate) up to this offset: every chunk handed out
    /// and the metadata chunks among them lie below it.
    reserved_to: u64,
}

/// How far ahead of the chunk handed out the COW file's space is taken at once, so that
/// most new chunks cost no extra call.
const RESERVE_AHEAD: u64 = 1 << 20;

impl Metadata {
    pub(super) fn new(
        store: &LoadedStore,
        policy: OverflowPolicy,
        mode: CommitMode,
        grow: Option<GrowPolicy>,
    ) -> Self {
        let valid = store.header.valid != 0;
        Metadata {
            geometry: store.geometry,
            policy,
            grow,
            mode,
            cow_bytes: AtomicU64::new(store.cow_bytes),
            state: AtomicU8::new(if valid { ACTIVE } else { INVALID }),
            inner: Mutex::new(Inner {
                next_free: store.next_free,
                current_area: store.current_area,
                current_committed: store.current_committed,
                area: store.area.clone(),
                zeroes: vec![0; store.area.len()],
                pending: 0,
                generation: 0,
                last_batch_ok: true,
                invalid_persisted: !valid,
                sealed: Vec::new(),
                recorded: 0,
                current_written: None,
                reserved_to: store
                    .geometry
                    .offset(store.geometry.area_location(store.current_area)),
            }),
            committed: Condvar::new(),
            gate: Mutex::new(0),
        }
    }

    fn cow_bytes(&self) -> u64 {
        self.cow_bytes.load(Ordering::Acquire)
    }

    /// The COW now has `len` bytes: later allocations may use them, as the kernel's
    /// `prepare_exception` sees a grown COW device. Overflow and invalid stay as they are.
    pub(super) fn grow(&self, cow: &dyn Backing, len: u64) -> Result<u64, EngineError> {
        let _inner = self.lock();
        let old = self.cow_bytes();
        if len > old {
            cow.grow(len)
                .map_err(EngineError::io("growing the COW", old))?;
            self.cow_bytes.store(len, Ordering::Release);
        }
        Ok(old)
    }

    /// Whether `chunk` lies inside the COW, growing the COW first where the grow policy
    /// allows. Called with the metadata lock held.
    fn room_for(&self, chunk: u64, cow: &dyn Backing) -> bool {
        let g = self.geometry;
        loop {
            let now = self.cow_bytes();
            if g.fits(chunk, now) {
                return true;
            }
            let Some(next) = self.grow.and_then(|p| p.next_size(now, g.chunk_bytes())) else {
                return false;
            };
            if let Err(e) = cow.grow(next) {
                tracing::error!("the COW is full and cannot grow: {e}");
                return false;
            }
            self.cow_bytes.store(next, Ordering::Release);
            tracing::warn!(
                "the COW was full: grown on demand from {} to {} (auto-extend)",
                crate::base::units::human(now),
                crate::base::units::human(next)
            );
        }
    }

    pub(super) fn mode(&self) -> CommitMode {
        self.mode
    }

    pub(super) fn state(&self) -> SnapshotState {
        match self.state.load(Ordering::Acquire) {
            ACTIVE => SnapshotState::Active,
            OVERFLOW => SnapshotState::Overflow,
            _ => SnapshotState::Invalid,
        }
    }

    pub(super) fn check_readable(&self) -> Result<(), EngineError> {
        match self.state() {
            SnapshotState::Invalid => Err(EngineError::Invalid),
            _ => Ok(()),
        }
    }

    pub(super) fn check_writable(&self) -> Result<(), EngineError> {
        match self.state() {
            SnapshotState::Active => Ok(()),
            SnapshotState::Overflow => Err(EngineError::Overflow),
            SnapshotState::Invalid => Err(EngineError::Invalid),
        }
    }

    pub(super) fn usage(&self) -> Usage {
        let inner = self.lock();
        Usage::compute(
            self.geometry,
            inner.next_free,
            inner.current_area,
            self.cow_bytes(),
        )
    }

    /// `persistent_prepare_exception`: reserve the next data chunk.
    pub(super) fn prepare(&self, cow: &dyn Backing) -> Result<u64, EngineError> {
        let mut inner = self.lock();
        self.check_writable()?;
        if !self.room_for(inner.next_free, cow) {
            return Err(match self.policy {
                OverflowPolicy::Refuse => {
                    let _ = self.state.compare_exchange(
                        ACTIVE,
                        OVERFLOW,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    EngineError::Overflow
                }
                OverflowPolicy::Invalidate => {
                    self.invalidate(&mut inner, cow);
                    EngineError::Invalid
                }
            });
        }
        let chunk = inner.next_free;
        let next = self.geometry.skip_metadata(chunk + 1);
        // Through the metadata chunk skipped, if any: the next area's entries go there.
        let end = self.geometry.offset(next).min(self.cow_bytes());
        if end > inner.reserved_to {
            self.reserve_to(&mut inner, cow, end)?;
        }
        inner.next_free = next;
        inner.pending += 1;
        Ok(chunk)
    }

    /// Takes the COW file's space up to `end` (and some way ahead) before a chunk there is
    /// handed out. A full file system then refuses this one write with ENOSPC, and nothing
    /// changes; found later, by the chunk's copy or the metadata write, it would invalidate
    /// the snapshot (as the kernel does on a COW write error) and lose the PC.
    fn reserve_to(
        &self,
        inner: &mut Inner,
        cow: &dyn Backing,
        end: u64,
    ) -> Result<(), EngineError> {
        let from = inner.reserved_to;
        let ahead = (end + RESERVE_AHEAD).min(self.cow_bytes()).max(end);
        if cow.reserve(from, ahead - from).is_ok() {
            inner.reserved_to = ahead;
            return Ok(());
        }
        cow.reserve(from, end - from)
            .map_err(EngineError::io("taking room in the COW file", from))?;
        inner.reserved_to = end;
        Ok(())
    }

    /// `persistent_commit_exception`: record the exception and, when no other exception is
    /// in flight or the area is full, write the batch. `copied` is false when the data copy
    /// failed, which invalidates the snapshot as in the kernel.
    pub(super) fn commit(
        &self,
        cow: &dyn Backing,
        e: DiskException,
        copied: bool,
    ) -> Result<(), EngineError> {
        let mut inner = self.lock();
        if !copied {
            self.invalidate(&mut inner, cow);
        }
        let per_area = self.geometry.exceptions_per_area();
        let at = usize::try_from(inner.current_committed).expect("entry index fits in memory")
            * DISK_EXCEPTION_SIZE;
        e.encode_into(&mut inner.area[at..at + DISK_EXCEPTION_SIZE]);
        inner.current_committed += 1;
        inner.pending -= 1;
        if self.mode == CommitMode::OnFlush {
            return self.record(&mut inner, cow);
        }

        if inner.pending > 0 && inner.current_committed != per_area {
            let generation = inner.generation;
            while inner.generation == generation {
                inner = self
                    .committed
                    .wait(inner)
                    .unwrap_or_else(|p| p.into_inner());
            }
            return if inner.last_batch_ok {
                Ok(())
            } else {
                Err(EngineError::Invalid)
            };
        }

        let ok = self.write_batch(&mut inner, cow);
        if !ok {
            self.invalidate(&mut inner, cow);
        }
        if inner.current_committed == per_area {
            inner.current_committed = 0;
            inner.current_area += 1;
            inner.area.fill(0);
        }
        inner.last_batch_ok = ok;
        inner.generation += 1;
        self.committed.notify_all();
        if ok {
            Ok(())
        } else {
            Err(EngineError::Invalid)
        }
    }

    /// OnFlush: the entry is in the current area in memory; seal the area when it is full.
    fn record(&self, inner: &mut Inner, cow: &dyn Backing) -> Result<(), EngineError> {
        if self.state() == SnapshotState::Invalid {
            return Err(EngineError::Invalid);
        }
        inner.recorded += 1;
        let g = self.geometry;
        if inner.current_committed == g.exceptions_per_area() {
            // Where the kernel would zero the next area past the end of the COW, it fails
            // and invalidates the snapshot: do the same now rather than at the flush.
            if !self.room_for(g.area_location(inner.current_area + 1), cow) {
                self.invalidate(inner, cow);
                return Err(EngineError::Invalid);
            }
            let full = std::mem::replace(&mut inner.area, inner.zeroes.clone());
            inner.sealed.push((inner.current_area, full));
            inner.current_area += 1;
            inner.current_committed = 0;
            inner.current_written = None;
        }
        Ok(())
    }

    /// Makes every completed write durable: in OnFlush mode, writes the recorded exceptions
    /// in crash-safe order (see the module comment); otherwise just flushes the data.
    pub(super) fn flush(&self, cow: &dyn Backing) -> Result<(), EngineError> {
        if self.mode == CommitMode::PerWrite {
            return cow
                .sync_data()
                .map_err(EngineError::io("flushing the COW", 0));
        }
        self.write_recorded(cow, true)
    }

    /// OnFlush: writes the exceptions recorded since the last flush, if there are any, as a
    /// flush does; with none, nothing is synced. This makes a completed write survive a
    /// crash of this process as it would with the kernel (for a protocol without flushes).
    pub(super) fn commit_recorded(&self, cow: &dyn Backing) -> Result<(), EngineError> {
        if self.mode == CommitMode::PerWrite {
            return Ok(());
        }
        self.write_recorded(cow, false)
    }

    /// A group commit: one writer at a time holds the commit gate, takes a copy of what was
    /// recorded and writes it with the metadata lock released, so writers go on recording
    /// meanwhile. Those waiting at the gate find their entries written by the commit before
    /// them and return at once, or write everything recorded up to then in one go.
    /// `sync_anyway`: a flush syncs the data even when no exception is new.
    fn write_recorded(&self, cow: &dyn Backing, sync_anyway: bool) -> Result<(), EngineError> {
        let sync = |what| cow.sync_data().map_err(EngineError::io(what, 0));
        // Everything recorded before this call; what others record from now on is theirs.
        let mine = self.lock().recorded;
        let mut durable = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.state() == SnapshotState::Invalid {
            return Err(EngineError::Invalid);
        }
        if *durable >= mine {
            return if sync_anyway {
                sync("flushing the COW")
            } else {
                Ok(())
            };
        }
        let mut inner = self.lock();
        let upto = inner.recorded;
        let sealed = std::mem::take(&mut inner.sealed);
        let current = inner.current_area;
        // The current area goes whole the first time, which clears what an earlier snapshot
        // may have left there; after that only the sectors of its new entries.
        let span = {
            let end = usize::try_from(inner.current_committed).expect("entry index fits")
                * DISK_EXCEPTION_SIZE;
            match inner.current_written {
                None => 0..inner.area.len(),
                Some(n) => {
                    let sector = usize::try_from(SECTOR).expect("a sector fits");
                    let start = usize::try_from(n).expect("entry index fits") * DISK_EXCEPTION_SIZE;
                    start / sector * sector..end.div_ceil(sector) * sector
                }
            }
        };
        let current_bytes = inner.area[span.clone()].to_vec();
        inner.current_written = Some(inner.current_committed);
        drop(inner);

        let g = self.geometry;
        // `bytes` at `within` bytes into `area`.
        let write_area = |area: u64, within: usize, bytes: &[u8]| {
            let at = g.offset(g.area_location(area)) + within as u64;
            cow.write_all_at(bytes, at)
                .map_err(EngineError::io("writing a metadata area", at))
        };
        let result = (|| {
            sync("flushing the COW's data")?;
            if let Some(((first, first_bytes), later)) = sealed.split_first() {
                for (area, bytes) in later {
                    write_area(*area, 0, bytes)?;
                }
                write_area(current, span.start, &current_bytes)?;
                sync("flushing the COW's metadata")?;
                write_area(*first, 0, first_bytes)?;
            } else {
                write_area(current, span.start, &current_bytes)?;
            }
            sync("flushing the COW's metadata")
        })();
        match result {
            Ok(()) => {
                *durable = upto;
                Ok(())
            }
            Err(e) => {
                // As in the kernel: a failed metadata write invalidates the snapshot.
                self.invalidate(&mut self.lock(), cow);
                Err(e)
            }
        }
    }

    fn write_batch(&self, inner: &mut Inner, cow: &dyn Backing) -> bool {
        if self.state() == SnapshotState::Invalid {
            return false;
        }
        let g = self.geometry;
        if inner.current_committed == g.exceptions_per_area() {
            // Zero the next area before this one is sealed, or a reload would read
            // stale entries there. Past the end of the COW this fails, as it does in
            // the kernel (the bio is beyond the device), and the snapshot is invalid.
            let next = g.area_location(inner.current_area + 1);
            if !self.room_for(next, cow) || cow.write_all_at(&inner.zeroes, g.offset(next)).is_err()
            {
                return false;
            }
        }
        let area_offset = g.offset(g.area_location(inner.current_area));
        cow.sync_data().is_ok()
            && cow.write_all_at(&inner.area, area_offset).is_ok()
            && cow.sync_data().is_ok()
    }

    /// `persistent_drop_snapshot`: persist `valid = 0`.
    fn invalidate(&self, inner: &mut Inner, cow: &dyn Backing) {
        self.state.store(INVALID, Ordering::Release);
        if !inner.invalid_persisted {
            inner.invalid_persisted = true;
            let header = Header::new(self.geometry.chunk_sectors(), false).encode();
            // Best effort, as in the kernel ("write header failed" is only logged).
            let _ = cow
                .write_all_at(&header[..HEADER_SIZE], 0)
                .and_then(|()| cow.sync_data());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
