//! COW compatibility with the kernel's own `snapshot` target, both ways, for chunk sizes
//! 4, 8, 32 and 64 KiB and for `P` and `PO`. Runs only in the test VM
//! (scripts/test-kernel.sh runs these ignored tests there; on a plain host they fail).

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use common::kernel::{cowctl, modprobe, require_vm, AlignedBuf, Rng, Snapshot};
use cowctl::cow::Usage;
use cowctl::dm::SnapshotStatus;
use cowctl::engine::{Engine, EngineError, OverflowPolicy, SnapshotState};

const CHUNK_SECTORS: [u32; 4] = [8, 16, 64, 128];
const MODES: [&str; 2] = ["P", "PO"];
const GOLDEN_BYTES: usize = 4 << 20;
const ROOMY_COW: u64 = 8 << 20;

struct Case {
    _dir: tempfile::TempDir,
    golden: PathBuf,
    cow: PathBuf,
    golden_bytes: Vec<u8>,
    /// What the PC's disk must read.
    model: Vec<u8>,
    chunk_sectors: u32,
    mode: &'static str,
    rng: Rng,
}

impl Case {
    /// A golden image and a COW; `fresh_file` makes an all-zero COW (magic 0) instead of
    /// one from `cowctl cow create`.
    fn new(chunk_sectors: u32, mode: &'static str, cow_bytes: u64, fresh_file: bool) -> Case {
        require_vm();
        modprobe("dm-snapshot");
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(0x9E37_79B9 ^ (u64::from(chunk_sectors) << 8) ^ mode.len() as u64);
        let golden_bytes = rng.bytes(GOLDEN_BYTES);
        let golden = dir.path().join("golden.img");
        std::fs::write(&golden, &golden_bytes).unwrap();
        let cow = dir.path().join("pc.cow");
        if fresh_file {
            std::fs::File::create(&cow)
                .unwrap()
                .set_len(cow_bytes)
                .unwrap();
        } else {
            let chunk = format!("{}", u64::from(chunk_sectors) * 512);
            cowctl(&[
                "cow",
                "create",
                cow.to_str().unwrap(),
                "--size",
                &cow_bytes.to_string(),
                "--chunk",
                &chunk,
            ]);
        }
        Case {
            _dir: dir,
            golden,
            cow,
            model: golden_bytes.clone(),
            golden_bytes,
            chunk_sectors,
            mode,
            rng,
        }
    }

    fn label(&self) -> String {
        format!("chunk {} KiB, {}", self.chunk_sectors / 2, self.mode)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::create(
            "cowtest-pc",
            &self.golden,
            &self.cow,
            self.mode,
            self.chunk_sectors,
        )
    }

    fn policy(&self) -> OverflowPolicy {
        if self.mode == "PO" {
            OverflowPolicy::Refuse
        } else {
            OverflowPolicy::Invalidate
        }
    }

    fn engine(&self) -> Engine {
        let options = cowctl::engine::EngineOptions {
            table_chunk_sectors: Some(self.chunk_sectors),
            overflow: self.policy(),
            read_only: false,
            commit: cowctl::engine::CommitMode::PerWrite,
            grow: None,
        };
        Engine::open(
            Box::new(cowctl::engine::backing::FileBacking::open(&self.golden, false).unwrap()),
            Box::new(cowctl::engine::backing::FileBacking::open(&self.cow, true).unwrap()),
            options,
        )
        .unwrap()
    }

    /// Random writes through the dm device: every other one with O_DIRECT (sector-aligned),
    /// the rest buffered at any offset and length. Returns the status after them.
    fn kernel_writes(&mut self, n: usize) -> SnapshotStatus {
        let snap = self.snapshot();
        let direct = snap.open(true);
        let buffered = snap.open(false);
        for i in 0..n {
            let mut offset = self.rng.below(GOLDEN_BYTES as u64) as usize;
            let mut len = 1 + self.rng.below(96 << 10) as usize;
            if i % 2 == 0 {
                offset &= !511;
                len = len.div_ceil(512) * 512;
            }
            len = len.min(GOLDEN_BYTES - offset);
            let data = self.rng.bytes(len);
            if i % 2 == 0 {
                direct
                    .write_all_at(AlignedBuf::from(&data).as_ref(), offset as u64)
                    .unwrap();
            } else {
                buffered.write_all_at(&data, offset as u64).unwrap();
            }
            self.model[offset..offset + len].copy_from_slice(&data);
        }
        buffered.sync_all().unwrap();
        assert!(
            snap.read_all() == self.model,
            "{}: the dm device differs from what was written",
            self.label()
        );
        snap.status()
    }

    /// Random writes through the engine at any offset and length.
    fn engine_writes(&mut self, n: usize) {
        let engine = self.engine();
        for _ in 0..n {
            let offset = self.rng.below(GOLDEN_BYTES as u64) as usize;
            let len = (1 + self.rng.below(96 << 10) as usize).min(GOLDEN_BYTES - offset);
            let data = self.rng.bytes(len);
            engine.write_at(&data, offset as u64).unwrap();
            self.model[offset..offset + len].copy_from_slice(&data);
        }
        engine.flush().unwrap();
    }

    fn inspect(&self) -> serde_json::Value {
        serde_json::from_str(&cowctl(&[
            "--json",
            "cow",
            "inspect",
            self.cow.to_str().unwrap(),
        ]))
        .unwrap()
    }

    fn inspect_usage(&self) -> Usage {
        let i = self.inspect();
        Usage {
            sectors_allocated: i["sectors_allocated"].as_u64().unwrap(),
            total_sectors: i["total_sectors"].as_u64().unwrap(),
            metadata_sectors: i["metadata_sectors"].as_u64().unwrap(),
        }
    }

    fn flatten(&self) -> Vec<u8> {
        let out = self.cow.with_extension("raw");
        let _ = std::fs::remove_file(&out);
        cowctl(&[
            "cow",
            "flatten",
            "--base",
            self.golden.to_str().unwrap(),
            self.cow.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        std::fs::read(out).unwrap()
    }

    /// The kernel loads the COW: it must show the model and the numbers `inspect` printed.
    fn kernel_agrees(&self) {
        let expected = self.inspect_usage();
        let snap = self.snapshot();
        assert_eq!(
            snap.status(),
            SnapshotStatus::Usage(expected),
            "{}: dmsetup status vs cowctl cow inspect",
            self.label()
        );
        assert!(
            snap.read_all() == self.model,
            "{}: the kernel reads other bytes than the engine wrote",
            self.label()
        );
    }

    /// The engine (through `flatten` and `inspect`) sees what the kernel left.
    fn engine_agrees(&self, status: &SnapshotStatus) {
        assert_eq!(
            &SnapshotStatus::Usage(self.inspect_usage()),
            status,
            "{}: cowctl cow inspect vs dmsetup status",
            self.label()
        );
        assert!(
            self.flatten() == self.model,
            "{}: cowctl cow flatten differs from the dm device",
            self.label()
        );
    }
}

fn each_case(f: impl Fn(u32, &'static str)) {
    for chunk in CHUNK_SECTORS {
        for mode in MODES {
            f(chunk, mode);
        }
    }
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn a_kernel_writes_then_cowctl_flattens_and_inspects_the_same() {
    each_case(|chunk, mode| {
        let mut case = Case::new(chunk, mode, ROOMY_COW, chunk == 16);
        let status = case.kernel_writes(60);
        case.engine_agrees(&status);
    });
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn b_engine_writes_then_the_kernel_reads_the_same() {
    each_case(|chunk, mode| {
        let mut case = Case::new(chunk, mode, ROOMY_COW, chunk == 64);
        case.engine_writes(60);
        case.kernel_agrees();
    });
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn c_kernel_and_engine_take_turns_on_one_file() {
    each_case(|chunk, mode| {
        let mut case = Case::new(chunk, mode, ROOMY_COW, false);
        for _round in 0..3 {
            let status = case.kernel_writes(25);
            case.engine_agrees(&status);
            case.engine_writes(25);
            case.kernel_agrees();
        }
    });
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn d_a_reset_cow_is_a_fresh_snapshot_to_the_kernel() {
    each_case(|chunk, mode| {
        let mut case = Case::new(chunk, mode, ROOMY_COW, false);
        case.kernel_writes(30);
        cowctl(&["cow", "reset", case.cow.to_str().unwrap()]);
        let snap = case.snapshot();
        let c = u64::from(chunk);
        let empty = Usage {
            sectors_allocated: 2 * c,
            total_sectors: ROOMY_COW / 512,
            metadata_sectors: 2 * c,
        };
        assert_eq!(
            snap.status(),
            SnapshotStatus::Usage(empty),
            "{}",
            case.label()
        );
        assert!(
            snap.read_all() == case.golden_bytes,
            "{}: not golden after reset",
            case.label()
        );
        drop(snap);
        let i = case.inspect();
        assert_eq!(
            (i["state"].as_str(), i["exceptions"].as_u64()),
            (Some("valid"), Some(0)),
            "{}",
            case.label()
        );
    });
}

/// A COW with room for about `data_chunks` chunks, away from an area boundary.
fn small_cow(chunk_sectors: u32, data_chunks: u64) -> u64 {
    (2 + data_chunks) * u64::from(chunk_sectors) * 512
}

/// Writes whole distinct chunks with O_DIRECT until the kernel refuses one.
fn kernel_fill(case: &mut Case, snap: &Snapshot) -> usize {
    let f = snap.open(true);
    let chunk = case.chunk_sectors as usize * 512;
    for (n, offset) in (0..GOLDEN_BYTES).step_by(chunk).enumerate() {
        let data = case.rng.bytes(chunk);
        if f.write_all_at(AlignedBuf::from(&data).as_ref(), offset as u64)
            .is_err()
        {
            return n;
        }
        case.model[offset..offset + chunk].copy_from_slice(&data);
    }
    panic!("{}: the COW never filled", case.label());
}

/// Writes whole distinct chunks through the engine until it refuses one.
fn engine_fill(case: &mut Case) -> EngineError {
    let engine = case.engine();
    let chunk = case.chunk_sectors as usize * 512;
    for offset in (0..GOLDEN_BYTES).step_by(chunk) {
        let data = case.rng.bytes(chunk);
        if let Err(e) = engine.write_at(&data, offset as u64) {
            return e;
        }
        case.model[offset..offset + chunk].copy_from_slice(&data);
    }
    panic!("{}: the COW never filled", case.label());
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn e_kernel_overflow_is_understood_by_the_engine() {
    each_case(|chunk, mode| {
        let mut case = Case::new(chunk, mode, small_cow(chunk, 40), false);
        let snap = case.snapshot();
        let written = kernel_fill(&mut case, &snap);
        assert_eq!(written, 40, "{}", case.label());
        let status = snap.status();
        if mode == "PO" {
            assert_eq!(status, SnapshotStatus::Overflow, "{}", case.label());
            assert!(
                snap.read_all() == case.model,
                "{}: reads after overflow",
                case.label()
            );
            drop(snap);
            let engine = case.engine();
            let mut buf = vec![0u8; GOLDEN_BYTES];
            engine.read_at(&mut buf, 0).unwrap();
            assert!(
                buf == case.model,
                "{}: engine reads after kernel overflow",
                case.label()
            );
            let last = (GOLDEN_BYTES - 512) as u64;
            assert!(
                matches!(engine.write_at(&[1; 512], last), Err(EngineError::Overflow)),
                "{}",
                case.label()
            );
            assert_eq!(engine.state(), SnapshotState::Overflow);
        } else {
            assert_eq!(
                status,
                SnapshotStatus::Invalid { cause: None },
                "{}",
                case.label()
            );
            drop(snap);
            assert_eq!(
                case.inspect()["valid"],
                false,
                "{}: valid = 0 persisted",
                case.label()
            );
            assert_eq!(
                case.engine().state(),
                SnapshotState::Invalid,
                "{}",
                case.label()
            );
        }
    });
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn e_engine_overflow_is_understood_by_the_kernel() {
    each_case(|chunk, mode| {
        let mut case = Case::new(chunk, mode, small_cow(chunk, 40), true);
        let err = engine_fill(&mut case);
        let snap = case.snapshot();
        if mode == "PO" {
            assert!(
                matches!(err, EngineError::Overflow),
                "{}: {err}",
                case.label()
            );
            assert!(
                snap.read_all() == case.model,
                "{}: kernel reads after engine overflow",
                case.label()
            );
            let f = snap.open(true);
            let refused = f.write_all_at(
                AlignedBuf::from(&vec![1u8; 512]).as_ref(),
                (GOLDEN_BYTES - 512) as u64,
            );
            assert!(
                refused.is_err(),
                "{}: the kernel accepted a write with no room",
                case.label()
            );
            assert_eq!(snap.status(), SnapshotStatus::Overflow, "{}", case.label());
            assert!(
                snap.read_all() == case.model,
                "{}: kernel reads after its own refusal",
                case.label()
            );
        } else {
            assert!(
                matches!(err, EngineError::Invalid),
                "{}: {err}",
                case.label()
            );
            assert_eq!(
                snap.status(),
                SnapshotStatus::Invalid { cause: None },
                "{}",
                case.label()
            );
        }
    });
}

/// When the last data chunk of an area is also the last chunk of the COW, filling that
/// area makes the kernel zero the next area past the end of the device, which fails and
/// invalidates the snapshot even with `PO`. The engine must do the same, and `cowctl cow
/// create` avoids such sizes.
#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn e_filling_an_area_that_ends_the_cow_invalidates_on_both_sides() {
    for chunk in [8u32, 16] {
        let per_area = u64::from(chunk) * 512 / 16;
        // Zeroed files of exactly that size: `cowctl cow create` would round it up.
        let mut kernel_case = Case::new(chunk, "PO", small_cow(chunk, per_area), true);
        let snap = kernel_case.snapshot();
        let written = kernel_fill(&mut kernel_case, &snap);
        let kernel_status = snap.status();
        drop(snap);
        let mut engine_case = Case::new(chunk, "PO", small_cow(chunk, per_area), true);
        let engine_err = engine_fill(&mut engine_case);
        eprintln!("chunk {chunk}: kernel wrote {written} chunks then {kernel_status}; engine: {engine_err}");
        assert_eq!(
            kernel_status,
            SnapshotStatus::Invalid { cause: None },
            "kernel, chunk {chunk}"
        );
        assert!(
            matches!(engine_err, EngineError::Invalid),
            "engine, chunk {chunk}: {engine_err}"
        );
        assert_eq!(
            engine_case.inspect()["valid"],
            kernel_case.inspect()["valid"]
        );
        // The same size asked of `cowctl cow create` gets one more chunk: the kernel then
        // overflows as PO promises, and the file stays valid. (With 8 KiB chunks the golden
        // image has no more chunks than the COW holds, so it cannot overflow.)
        if chunk != 8 {
            continue;
        }
        let mut safe = Case::new(chunk, "PO", small_cow(chunk, per_area), false);
        let snap = safe.snapshot();
        kernel_fill(&mut safe, &snap);
        assert_eq!(
            snap.status(),
            SnapshotStatus::Overflow,
            "cowctl-made COW, chunk {chunk}"
        );
        drop(snap);
        assert_eq!(safe.inspect()["valid"], true);
    }
}
