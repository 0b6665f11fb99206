//! Write-through commits (the AoE target's way: record in memory, commit before answering)
//! are grouped: writers that record while a commit is in flight are not held up by it, and
//! one commit after it covers them all, so those behind it return without syncing again.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use cowctl::cow::ReadAt;
use cowctl::engine::backing::{Backing, MemBacking, MemOp};
use cowctl::engine::{CommitMode, Engine, EngineOptions, OverflowPolicy};

/// A device whose next sync waits until the test opens it.
struct Gated {
    mem: Arc<MemBacking>,
    /// (closed, a sync is waiting)
    gate: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gated {
    fn wait_for_a_waiting_sync(&self) {
        let mut g = self.gate.lock().unwrap();
        while !g.1 {
            g = self.changed.wait(g).unwrap();
        }
    }
    fn open(&self) {
        self.gate.lock().unwrap().0 = false;
        self.changed.notify_all();
    }
}

impl ReadAt for Gated {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.mem.read_exact_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.mem.size()
    }
}

impl Backing for Gated {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.mem.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let mut g = self.gate.lock().unwrap();
        g.1 = true;
        self.changed.notify_all();
        while g.0 {
            g = self.changed.wait(g).unwrap();
        }
        drop(g);
        self.mem.sync_data()
    }
}

fn syncs(log: &[MemOp]) -> usize {
    log.iter().filter(|op| matches!(op, MemOp::Sync)).count()
}

#[test]
fn writers_behind_a_commit_in_flight_share_one_commit() {
    const CHUNK: usize = 4096;
    let golden = MemBacking::new(
        (0..64 * CHUNK)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect(),
    );
    let cow = Arc::new(Gated {
        mem: Arc::new(MemBacking::zeroed(128 * CHUNK)),
        gate: Mutex::new((false, false)),
        changed: Condvar::new(),
    });
    let engine = Arc::new(
        Engine::open(
            Box::new(golden),
            Box::new(cow.clone()),
            EngineOptions {
                table_chunk_sectors: Some(8),
                overflow: OverflowPolicy::Refuse,
                read_only: false,
                commit: CommitMode::OnFlush,
                grow: None,
            },
        )
        .unwrap(),
    );
    let before = syncs(&cow.mem.log());

    // The first writer's commit stops in its first sync.
    *cow.gate.lock().unwrap() = (true, false);
    engine.write_at(&[1; 512], 0).unwrap();
    let first = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.commit())
    };
    cow.wait_for_a_waiting_sync();

    // Meanwhile three more writers record a new chunk each; recording does not wait.
    let (done, finished) = mpsc::channel();
    let writers: Vec<_> = (1..4u8)
        .map(|i| {
            let (engine, done) = (engine.clone(), done.clone());
            std::thread::spawn(move || {
                engine
                    .write_at(&[i + 1; 512], u64::from(i) * CHUNK as u64 * 4)
                    .unwrap();
                done.send(()).unwrap();
                engine.commit()
            })
        })
        .collect();
    for _ in 0..3 {
        finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a write waited for the commit in flight");
    }
    cow.open();
    first.join().unwrap().unwrap();
    for w in writers {
        w.join().unwrap().unwrap();
    }

    // Two flushes for the first commit, two for the one that covered the other three.
    assert_eq!(syncs(&cow.mem.log()) - before, 4);
    let mut got = vec![0u8; 512];
    for i in 1..4u8 {
        engine
            .read_at(&mut got, u64::from(i) * CHUNK as u64 * 4)
            .unwrap();
        assert_eq!(got, vec![i + 1; 512]);
    }
    drop(engine);
    let store = cowctl::cow::LoadedStore::load(cow.mem.snapshot().as_slice(), Some(8)).unwrap();
    assert_eq!(store.exceptions.len(), 4);
}
