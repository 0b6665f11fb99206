//! Many threads writing and reading at once: first writes racing into the same chunks must
//! allocate each chunk once and lose no sector; readers see old or new data, never zeros or
//! another chunk's; the result reloads exactly.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cowctl::cow::LoadedStore;
use cowctl::engine::backing::FileBacking;
use cowctl::engine::{Engine, EngineOptions, OverflowPolicy};

const THREADS: u64 = 8;
const SECTORS: u64 = 4096; // 2 MiB disk

fn golden_byte(sector: u64) -> u8 {
    (sector % 199) as u8
}

fn open(dir: &std::path::Path) -> Engine {
    let options = EngineOptions {
        table_chunk_sectors: Some(8),
        overflow: OverflowPolicy::Refuse,
        read_only: false,
        commit: cowctl::engine::CommitMode::PerWrite,
        grow: None,
    };
    Engine::open(
        Box::new(FileBacking::open(&dir.join("golden"), false).unwrap()),
        Box::new(FileBacking::open(&dir.join("cow"), true).unwrap()),
        options,
    )
    .unwrap()
}

#[test]
fn racing_first_writes_into_shared_chunks_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let golden: Vec<u8> = (0..SECTORS)
        .flat_map(|s| std::iter::repeat_n(golden_byte(s), 512))
        .collect();
    std::fs::write(dir.path().join("golden"), &golden).unwrap();
    cowctl::cowfile::create(
        &dir.path().join("cow"),
        cowctl::base::units::ByteSize(4 << 20),
        cowctl::base::units::ByteSize(4096),
    )
    .unwrap();
    let engine = Arc::new(open(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));

    // Readers: every byte of a sector is golden or its writer's, never zeros (a chunk read
    // before its golden bytes were copied) nor another sector's (a wrong chunk). A read that
    // overlaps the one write of its sector may see part of each: the COW is a file, and a
    // buffered read beside a write into the same page is not atomic in the kernel either
    // (dm-snapshot over a loop device reads its file the same way).
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 512];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let s = (n * 7919 + r) % SECTORS;
                    engine.read_at(&mut buf, s * 512).unwrap();
                    let writer = 0x80 | (s % THREADS) as u8;
                    let stray = buf.iter().find(|&&b| b != golden_byte(s) && b != writer);
                    assert!(stray.is_none(), "sector {s} holds {stray:?}");
                    n += 1;
                }
                n
            })
        })
        .collect();

    // Writer t owns the sectors s with s % THREADS == t: every 4 KiB chunk is shared by all
    // writers, so first writes to a chunk race each other.
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let buf = vec![0x80 | t as u8; 512];
                let mut s = t;
                while s < SECTORS {
                    engine.write_at(&buf, s * 512).unwrap();
                    s += THREADS * 3; // leave two thirds of the sectors golden
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);

    let expected = |s: u64| {
        if s % (THREADS * 3) < THREADS {
            0x80 | (s % THREADS) as u8
        } else {
            golden_byte(s)
        }
    };
    let verify = |engine: &Engine| {
        let mut buf = vec![0u8; 512];
        for s in 0..SECTORS {
            engine.read_at(&mut buf, s * 512).unwrap();
            assert!(
                buf.iter().all(|&b| b == expected(s)),
                "sector {s}: {} expected {}",
                buf[0],
                expected(s)
            );
        }
    };
    verify(&engine);
    let chunks_written = (0..SECTORS)
        .filter(|s| s % (THREADS * 3) < THREADS)
        .map(|s| s / 8)
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(
        engine.exception_count(),
        chunks_written,
        "each chunk allocated exactly once"
    );
    drop(engine);

    let cow = std::fs::File::open(dir.path().join("cow")).unwrap();
    let store = LoadedStore::load(&cow, None).unwrap();
    assert_eq!(store.exceptions.len(), chunks_written);
    verify(&open(dir.path()));
}
