//! The engine against a plain in-memory model of the disk: random writes (unaligned, across
//! chunk and area boundaries, on into overflow, with the COW growing), every byte compared after each flush and
//! after reopening the files, under both overflow policies.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cowctl::engine::backing::FileBacking;
use cowctl::engine::{
    CommitMode, Engine, EngineError, EngineOptions, GrowPolicy, OverflowPolicy, SnapshotState,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write {
        offset_seed: u64,
        len: usize,
        aligned: bool,
        fill: u8,
    },
    Flush,
    Reopen,
    Trim {
        offset_seed: u64,
        len: usize,
    },
    Zero {
        offset_seed: u64,
        len: usize,
        no_hole: bool,
    },
    /// Auto-extend: the COW grows by this many chunks while the engine runs.
    Grow {
        chunks: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<u64>(), 1usize..3000, any::<bool>(), any::<u8>())
            .prop_map(|(offset_seed, len, aligned, fill)| Op::Write { offset_seed, len, aligned, fill }),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => (any::<u64>(), 1usize..6000).prop_map(|(offset_seed, len)| Op::Trim { offset_seed, len }),
        1 => (any::<u64>(), 1usize..6000, any::<bool>())
            .prop_map(|(offset_seed, len, no_hole)| Op::Zero { offset_seed, len, no_hole }),
        1 => (1u64..40).prop_map(|chunks| Op::Grow { chunks }),
    ]
}

/// The model: what the disk must read back, and which chunks have been copied.
struct Model {
    data: Vec<u8>,
    golden: Vec<u8>,
    chunk: u64,
    per_area: u64,
    cow_bytes: u64,
    mapped: HashSet<u64>,
    capacity: u64,
    state: SnapshotState,
    policy: OverflowPolicy,
    grow: Option<GrowPolicy>,
}

impl Model {
    /// Counts data chunks the simple way: every chunk after 0 and 1 that is not an area.
    fn capacity(chunk: u64, per_area: u64, cow_bytes: u64) -> u64 {
        (2..cow_bytes / chunk)
            .filter(|c| c % (per_area + 1) != 1)
            .count() as u64
    }

    /// Applies a write chunk by chunk as the kernel splits it; returns the error it must give.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Option<&'static str> {
        match self.state {
            SnapshotState::Invalid => return Some("invalid"),
            SnapshotState::Overflow => return Some("overflow"),
            SnapshotState::Active => {}
        }
        let mut pos = offset;
        let end = offset + bytes.len() as u64;
        while pos < end {
            let c = pos / self.chunk;
            let seg_end = ((c + 1) * self.chunk).min(end);
            if !self.mapped.contains(&c) {
                while self.mapped.len() as u64 == self.capacity && self.grow_once() {}
                if self.mapped.len() as u64 == self.capacity {
                    return Some(match self.policy {
                        OverflowPolicy::Refuse => {
                            self.state = SnapshotState::Overflow;
                            "overflow"
                        }
                        OverflowPolicy::Invalidate => {
                            self.state = SnapshotState::Invalid;
                            "invalid"
                        }
                    });
                }
                self.mapped.insert(c);
                let n = self.mapped.len() as u64;
                if n.is_multiple_of(self.per_area) {
                    // The area just filled: the kernel zeroes the next one, and fails if it
                    // lies past the end of the COW.
                    let next_area = 1 + (self.per_area + 1) * (n / self.per_area);
                    while (next_area + 1) * self.chunk > self.cow_bytes && self.grow_once() {}
                    if (next_area + 1) * self.chunk > self.cow_bytes {
                        self.state = SnapshotState::Invalid;
                        return Some("invalid");
                    }
                }
            }
            let (a, b) = ((pos - offset) as usize, (seg_end - offset) as usize);
            self.data[pos as usize..seg_end as usize].copy_from_slice(&bytes[a..b]);
            pos = seg_end;
        }
        None
    }

    /// Auto-extend in the engine: a full COW grows one step instead of overflowing.
    fn grow_once(&mut self) -> bool {
        let Some(next) = self
            .grow
            .and_then(|g| g.next_size(self.cow_bytes, self.chunk))
        else {
            return false;
        };
        self.cow_bytes = next;
        self.capacity = Model::capacity(self.chunk, self.per_area, next);
        true
    }

    fn writable(&self) -> Option<&'static str> {
        match self.state {
            SnapshotState::Invalid => Some("invalid"),
            SnapshotState::Overflow => Some("overflow"),
            SnapshotState::Active => None,
        }
    }

    /// The kernel's discard with discard_zeroes_cow: whole chunks with an exception read
    /// zeros afterwards; everything else is left as it is.
    fn trim(&mut self, offset: u64, len: u64) -> Option<&'static str> {
        if let Some(e) = self.writable() {
            return Some(e);
        }
        for c in offset.div_ceil(self.chunk)..(offset + len) / self.chunk {
            if self.mapped.contains(&c) {
                let end = ((c + 1) * self.chunk).min(self.data.len() as u64);
                self.data[(c * self.chunk) as usize..end as usize].fill(0);
            }
        }
        None
    }

    /// Zeros read back; a chunk is only allocated where the golden bytes are not zero.
    fn zero(&mut self, offset: u64, len: u64) -> Option<&'static str> {
        let mut pos = offset;
        while pos < offset + len {
            if let Some(e) = self.writable() {
                return Some(e);
            }
            let c = pos / self.chunk;
            let seg_end = ((c + 1) * self.chunk).min(offset + len);
            let (a, b) = (pos as usize, seg_end as usize);
            if self.mapped.contains(&c) {
                self.data[a..b].fill(0);
            } else if self.golden[a..b].iter().any(|&x| x != 0) {
                if let Some(e) = self.write(pos, &vec![0u8; b - a]) {
                    return Some(e);
                }
            }
            pos = seg_end;
        }
        None
    }
}

fn kind(e: &EngineError) -> &'static str {
    match e {
        EngineError::Overflow => "overflow",
        EngineError::Invalid => "invalid",
        _ => "other",
    }
}

fn open(golden: &Path, cow: &Path, chunk_sectors: u32, policy: OverflowPolicy) -> Engine {
    open_with(
        golden,
        cow,
        chunk_sectors,
        policy,
        CommitMode::PerWrite,
        None,
    )
}

fn open_with(
    golden: &Path,
    cow: &Path,
    chunk_sectors: u32,
    policy: OverflowPolicy,
    commit: CommitMode,
    grow: Option<GrowPolicy>,
) -> Engine {
    let options = EngineOptions {
        table_chunk_sectors: Some(chunk_sectors),
        overflow: policy,
        read_only: false,
        commit,
        grow,
    };
    Engine::open(
        Box::new(FileBacking::open(golden, false).unwrap()),
        Box::new(FileBacking::open(cow, true).unwrap()),
        options,
    )
    .unwrap()
}

/// A COW file of exactly `bytes` with a valid header (`cow create` would round some sizes up).
fn write_cow(path: &Path, chunk_sectors: u32, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &f,
        &cowctl::cow::Header::new(chunk_sectors, true).encode(),
        0,
    )
    .unwrap();
}

fn compare_all(engine: &Engine, model: &Model, when: &str) -> Result<(), TestCaseError> {
    if model.state == SnapshotState::Invalid {
        let mut b = [0u8; 1];
        prop_assert!(
            matches!(engine.read_at(&mut b, 0), Err(EngineError::Invalid)),
            "reads must fail when invalid ({when})"
        );
        return Ok(());
    }
    let mut got = vec![0u8; model.data.len()];
    engine
        .read_at(&mut got, 0)
        .map_err(|e| TestCaseError::fail(format!("read failed {when}: {e}")))?;
    if let Some(i) = got.iter().zip(&model.data).position(|(a, b)| a != b) {
        return Err(TestCaseError::fail(format!(
            "byte {i} differs {when}: engine {} model {}",
            got[i], model.data[i]
        )));
    }
    // The extents a server sends with sendfile hold the same bytes.
    let extents = engine
        .extents(0, got.len())
        .expect("file backings")
        .unwrap();
    let mut via_files = Vec::with_capacity(got.len());
    for e in &extents {
        let mut buf = vec![0u8; e.len];
        nix::sys::uio::pread(e.fd, &mut buf, e.offset as i64).unwrap();
        via_files.extend(buf);
    }
    prop_assert!(via_files == got, "extents disagree with read_at {}", when);
    prop_assert_eq!(
        engine.exception_count(),
        model.mapped.len(),
        "exceptions {}",
        when
    );
    let usage = engine.usage();
    prop_assert_eq!(
        usage.data_sectors(),
        model.mapped.len() as u64 * model.chunk / 512,
        "data sectors {}",
        when
    );
    prop_assert_eq!(usage.total_sectors, model.cow_bytes / 512);
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one per property dimension
fn run(
    chunk_pow: u32,
    golden_sectors: u64,
    golden_tail: u64,
    cow_chunks: u64,
    new_cow: bool,
    po: bool,
    on_flush: bool,
    grows: bool,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let commit = if on_flush {
        CommitMode::OnFlush
    } else {
        CommitMode::PerWrite
    };
    let dir = tempfile::tempdir().unwrap();
    let chunk_sectors = 1u32 << chunk_pow;
    let chunk = u64::from(chunk_sectors) * 512;
    let golden_len = golden_sectors * 512 + golden_tail;
    let golden: Vec<u8> = (0..golden_len)
        .map(|i| (i * 7 % 251) as u8 ^ 0x5a)
        .collect();
    let golden_path: PathBuf = dir.path().join("golden.img");
    std::fs::write(&golden_path, &golden).unwrap();
    let cow_path = dir.path().join("pc.cow");
    let cow_bytes = cow_chunks * chunk;
    if new_cow {
        std::fs::File::create(&cow_path)
            .unwrap()
            .set_len(cow_bytes)
            .unwrap();
    } else {
        write_cow(&cow_path, chunk_sectors, cow_bytes);
    }
    let policy = if po {
        OverflowPolicy::Refuse
    } else {
        OverflowPolicy::Invalidate
    };
    let per_area = chunk / 16;
    // A full COW grows by half, to at most three times its first size.
    let grow = grows.then_some(GrowPolicy {
        step_percent: 50.0,
        max_bytes: 3 * cow_bytes,
    });
    let mut model = Model {
        data: golden.clone(),
        golden: golden.clone(),
        chunk,
        per_area,
        cow_bytes,
        mapped: HashSet::new(),
        capacity: Model::capacity(chunk, per_area, cow_bytes),
        state: SnapshotState::Active,
        policy,
        grow,
    };
    let mut engine = open_with(&golden_path, &cow_path, chunk_sectors, policy, commit, grow);
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Write {
                offset_seed,
                len,
                aligned,
                fill,
            } => {
                let mut offset = offset_seed % golden_len;
                if aligned {
                    offset -= offset % chunk;
                }
                let len = (len as u64).min(golden_len - offset) as usize;
                let bytes: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let expected = model.write(offset, &bytes);
                let got = engine.write_at(&bytes, offset).err();
                prop_assert_eq!(
                    got.as_ref().map(kind),
                    expected,
                    "step {}: write {} at {}",
                    step,
                    len,
                    offset
                );
                prop_assert_eq!(engine.state(), model.state, "state after step {}", step);
            }
            Op::Trim { offset_seed, len } => {
                let offset = offset_seed % golden_len;
                let len = (len as u64).min(golden_len - offset);
                let expected = model.trim(offset, len);
                let got = engine.trim(offset, len).err();
                prop_assert_eq!(
                    got.as_ref().map(kind),
                    expected,
                    "step {}: trim {} at {}",
                    step,
                    len,
                    offset
                );
            }
            Op::Zero {
                offset_seed,
                len,
                no_hole,
            } => {
                let offset = offset_seed % golden_len;
                let len = (len as u64).min(golden_len - offset);
                let expected = model.zero(offset, len);
                let got = engine.write_zeroes(offset, len, no_hole).err();
                prop_assert_eq!(
                    got.as_ref().map(kind),
                    expected,
                    "step {}: zero {} at {}",
                    step,
                    len,
                    offset
                );
                prop_assert_eq!(engine.state(), model.state, "state after step {}", step);
            }
            Op::Grow { chunks } => {
                let old = engine.grow(model.cow_bytes + chunks * chunk);
                prop_assert_eq!(old.ok(), Some(model.cow_bytes), "step {}: grow", step);
                model.cow_bytes += chunks * chunk;
                model.capacity = Model::capacity(chunk, per_area, model.cow_bytes);
                prop_assert_eq!(engine.usage().total_sectors, model.cow_bytes / 512);
            }
            Op::Flush => {
                let r = engine.flush();
                prop_assert_eq!(r.is_err(), model.state == SnapshotState::Invalid);
                compare_all(&engine, &model, &format!("after flush at step {step}"))?;
            }
            Op::Reopen => {
                drop(engine);
                engine = open_with(&golden_path, &cow_path, chunk_sectors, policy, commit, grow);
                if model.state == SnapshotState::Overflow {
                    model.state = SnapshotState::Active; // overflow lives in memory only
                }
                prop_assert_eq!(engine.state(), model.state);
                compare_all(&engine, &model, &format!("after reopen at step {step}"))?;
            }
        }
    }
    drop(engine);
    let engine = open_with(&golden_path, &cow_path, chunk_sectors, policy, commit, grow);
    if model.state == SnapshotState::Overflow {
        model.state = SnapshotState::Active;
    }
    compare_all(&engine, &model, "at the end")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn engine_matches_model(
        chunk_pow in 0u32..4,
        golden_sectors in 8u64..160,
        golden_tail in prop_oneof![3 => Just(0u64), 1 => 1u64..512],
        cow_chunks in 3u64..140,
        new_cow in any::<bool>(),
        po in any::<bool>(),
        on_flush in any::<bool>(),
        grows in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(chunk_pow, golden_sectors, golden_tail, cow_chunks, new_cow, po, on_flush, grows, ops)?;
    }
}

/// The kernel's quirk on its own: when the last data chunk before an area fills that area
/// and the next area would lie past the end of the COW, even `PO` goes invalid.
#[test]
fn filling_the_last_area_exactly_at_the_end_invalidates_even_with_po() {
    // 1-sector chunks: 32 entries per area. 34 chunks = header, area 0, 32 data chunks.
    let ops: Vec<Op> = (0..32)
        .map(|i| Op::Write {
            offset_seed: i * 512,
            len: 512,
            aligned: true,
            fill: i as u8,
        })
        .collect();
    run(0, 64, 0, 34, false, true, false, false, ops.clone()).unwrap();
    run(0, 64, 0, 34, false, true, true, false, ops.clone()).unwrap();
    // With auto-extend in the engine the COW grows for the next area instead.
    run(0, 64, 0, 34, false, true, true, true, ops).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g");
    let c = dir.path().join("c");
    std::fs::write(&g, vec![1u8; 64 * 512]).unwrap();
    write_cow(&c, 1, 34 * 512);
    let e = open(&g, &c, 1, OverflowPolicy::Refuse);
    for i in 0..31u64 {
        e.write_at(&[2u8; 512], i * 512).unwrap();
    }
    assert!(matches!(
        e.write_at(&[2u8; 512], 31 * 512),
        Err(EngineError::Invalid)
    ));
    drop(e);
    let i = cowctl::cowfile::inspect(&c, None).unwrap();
    assert!(!i.valid, "valid = 0 must be persisted");

    // `cow create` rounds such a size up by a chunk, and then a full COW just overflows.
    let safe = dir.path().join("safe");
    let made = cowctl::cowfile::create(
        &safe,
        cowctl::base::units::ByteSize(34 * 512),
        cowctl::base::units::ByteSize(512),
    )
    .unwrap();
    assert_eq!(
        (made.size_bytes, made.requested_bytes),
        (35 * 512, Some(34 * 512))
    );
    let e = open(&g, &safe, 1, OverflowPolicy::Refuse);
    for i in 0..32u64 {
        e.write_at(&[2u8; 512], i * 512).unwrap();
    }
    assert!(matches!(
        e.write_at(&[2u8; 512], 32 * 512),
        Err(EngineError::Overflow)
    ));
}
