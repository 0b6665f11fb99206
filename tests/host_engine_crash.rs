//! A crash at any point leaves a COW that loads, and that holds every write completed
//! before the last completed flush. The COW runs on a recording in-memory device; for every
//! prefix of its write/sync log we rebuild what the disk could hold after a power cut:
//! everything up to the last sync, plus none, all or random subsets of the writes after it.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

use std::sync::Arc;

use cowctl::cow::{HeaderState, LoadedStore};
use cowctl::engine::backing::{MemBacking, MemOp};
use cowctl::engine::{CommitMode, Engine, EngineOptions, OverflowPolicy};
use proptest::prelude::*;

fn apply(image: &mut [u8], op: &MemOp) {
    if let MemOp::Write { offset, data } = op {
        image[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
}

struct Flushed {
    log_len: usize,
    writes_before: usize,
    disk: Vec<u8>,
}

fn check(
    chunk_sectors: u32,
    cow_chunks: u64,
    new_cow: bool,
    commit: CommitMode,
    writes: Vec<(u64, usize, u8, bool)>,
    subset_seed: u64,
) -> Result<(), TestCaseError> {
    let chunk = u64::from(chunk_sectors) * 512;
    let golden: Vec<u8> = (0..48 * 512u32).map(|i| (i % 253) as u8).collect();
    // A reused device: stale bytes everywhere but the header chunk (and area 0 of a valid
    // empty store), so a missing zeroing of the next area would load stale entries.
    let mut initial: Vec<u8> = (0..cow_chunks * chunk)
        .map(|i| (i % 241) as u8 | 1)
        .collect();
    initial[..chunk as usize].fill(0);
    if !new_cow {
        initial[..16].copy_from_slice(&cowctl::cow::Header::new(chunk_sectors, true).encode());
        initial[chunk as usize..2 * chunk as usize].fill(0);
    }
    let cow = Arc::new(MemBacking::new(initial.clone()));
    let options = EngineOptions {
        table_chunk_sectors: Some(chunk_sectors),
        overflow: OverflowPolicy::Refuse,
        read_only: false,
        commit,
        grow: None,
    };
    let engine = Engine::open(
        Box::new(MemBacking::new(golden.clone())),
        Box::new(cow.clone()),
        options,
    )
    .unwrap();

    let mut model = golden.clone();
    let mut issued: Vec<(usize, usize, u8)> = Vec::new();
    let mut flushed = vec![Flushed {
        log_len: 0,
        writes_before: 0,
        disk: golden.clone(),
    }];
    for (seed, len, fill, flush) in writes {
        let offset = (seed % golden.len() as u64) as usize;
        let len = len.min(golden.len() - offset);
        issued.push((offset, len, fill));
        if engine.write_at(&vec![fill; len], offset as u64).is_err() {
            break; // overflow: stop writing; a partly applied write may still show
        }
        model[offset..offset + len].fill(fill);
        if flush {
            engine.flush().unwrap();
            flushed.push(Flushed {
                log_len: cow.log().len(),
                writes_before: issued.len(),
                disk: model.clone(),
            });
        }
    }
    // The engine invalidates the snapshot where the kernel would (an area filling up the
    // COW's last chunk); then valid = 0 may be on disk and no data is promised any more.
    let invalidated = engine.state() == cowctl::engine::SnapshotState::Invalid;
    let log = cow.log();
    let mut rng = subset_seed;
    for cut in 0..=log.len() {
        let last_sync = log[..cut]
            .iter()
            .rposition(|op| matches!(op, MemOp::Sync))
            .map_or(0, |i| i + 1);
        let mut durable = initial.clone();
        log[..last_sync]
            .iter()
            .for_each(|op| apply(&mut durable, op));
        let promised = flushed.iter().rev().find(|f| f.log_len <= cut).unwrap();
        let later = &issued[promised.writes_before..];
        for variant in 0..4 {
            let mut image = durable.clone();
            for op in &log[last_sync..cut] {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let take = match variant {
                    0 => false,
                    1 => true,
                    _ => rng >> 63 == 1,
                };
                if take {
                    apply(&mut image, op);
                }
            }
            let store = LoadedStore::load(image.as_slice(), Some(chunk_sectors));
            let store = store.map_err(|e| {
                TestCaseError::fail(format!("crash after op {cut} (variant {variant}): {e}"))
            })?;
            if store.state == HeaderState::Invalid {
                prop_assert!(
                    invalidated,
                    "crash after op {} (variant {}): invalid, but the engine never invalidated it",
                    cut,
                    variant
                );
                continue;
            }
            let reopened = Engine::open(
                Box::new(MemBacking::new(golden.clone())),
                Box::new(MemBacking::new(image)),
                EngineOptions {
                    read_only: true,
                    ..options
                },
            )
            .unwrap();
            let mut got = vec![0u8; golden.len()];
            reopened.read_at(&mut got, 0).unwrap();
            // A byte holds what was flushed, or what a write issued after that flush put there.
            for (i, (&g, &p)) in got.iter().zip(&promised.disk).enumerate() {
                let written_later = later
                    .iter()
                    .any(|&(o, l, f)| (o..o + l).contains(&i) && f == g);
                if g != p && !written_later {
                    return Err(TestCaseError::fail(format!(
                        "crash after op {cut} (variant {variant}): byte {i} is {g}, but {p} was flushed"
                    )));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60))]

    #[test]
    fn a_crash_at_any_point_leaves_a_loadable_cow_with_every_flushed_write(
        chunk_pow in 0u32..3,
        cow_chunks in 4u64..90,
        new_cow in any::<bool>(),
        on_flush in any::<bool>(),
        writes in proptest::collection::vec((any::<u64>(), 1usize..1500, 1u8..255, proptest::bool::weighted(0.3)), 1..30),
        seed in any::<u64>(),
    ) {
        let commit = if on_flush { CommitMode::OnFlush } else { CommitMode::PerWrite };
        check(1 << chunk_pow, cow_chunks, new_cow, commit, writes, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Commit-on-flush writes several metadata areas in one flush; with 32 entries per area
    /// and rare flushes, a flush regularly seals more than one, so a crash between its
    /// writes must still find the first unsealed area on disk partial.
    #[test]
    fn a_crash_inside_a_flush_that_seals_several_areas_loses_nothing_flushed(
        cow_chunks in 70u64..200,
        new_cow in any::<bool>(),
        writes in proptest::collection::vec((any::<u64>(), 1usize..1500, 1u8..255, proptest::bool::weighted(0.04)), 40..90),
        seed in any::<u64>(),
    ) {
        check(1, cow_chunks, new_cow, CommitMode::OnFlush, writes, seed)?;
    }
}
