//! 4 KiB random reads and writes through the engine on real files, and the engine's memory
//! per exception. `cargo bench --bench engine` prints criterion's figures; the memory
//! figures come first.

#![allow(clippy::cast_possible_truncation)] // benchmark sizes are small constants

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cowctl::base::chunkmap::ChunkMap;
use cowctl::base::units::ByteSize;
use cowctl::cow::ReadAt;
use cowctl::engine::backing::FileBacking;
use cowctl::engine::{CommitMode, Engine, EngineOptions, OverflowPolicy};
use criterion::{criterion_group, Criterion, Throughput};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const GOLDEN: u64 = 256 << 20;
const CHUNK: u64 = 16 << 10;

struct Setup {
    _dir: tempfile::TempDir,
    golden: std::path::PathBuf,
    cow: std::path::PathBuf,
}

fn setup(cow_size: u64) -> Setup {
    let dir =
        tempfile::tempdir_in(std::env::var("COWCTL_BENCH_DIR").unwrap_or_else(|_| "target".into()))
            .unwrap();
    let golden = dir.path().join("golden.img");
    let block: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 % 255) as u8).collect();
    let mut f = std::fs::File::create(&golden).unwrap();
    for _ in 0..GOLDEN >> 20 {
        std::io::Write::write_all(&mut f, &block).unwrap();
    }
    f.sync_all().unwrap();
    let cow = dir.path().join("pc.cow");
    cowctl::cowfile::create(&cow, ByteSize(cow_size), ByteSize(CHUNK)).unwrap();
    Setup {
        _dir: dir,
        golden,
        cow,
    }
}

fn open(s: &Setup) -> Engine {
    open_with(
        Box::new(FileBacking::open(&s.golden, false).unwrap()),
        s,
        CommitMode::PerWrite,
    )
}

fn open_with(golden: Box<dyn ReadAt + Send + Sync>, s: &Setup, commit: CommitMode) -> Engine {
    Engine::open(
        golden,
        Box::new(FileBacking::open(&s.cow, true).unwrap()),
        EngineOptions {
            table_chunk_sectors: None,
            overflow: OverflowPolicy::Refuse,
            read_only: false,
            commit,
            grow: None,
        },
    )
    .unwrap()
}

/// The golden image without its file, so the engine copies through a buffer.
struct NoFile(FileBacking);

impl ReadAt for NoFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.0.size()
    }
}

struct Rng(u64);
impl Rng {
    fn block(&mut self, blocks: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % blocks) * 4096
    }
}

fn memory_per_exception() {
    for n in [10_000u64, 100_000, 1_000_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let mut map = ChunkMap::default();
        for i in 0..n {
            map.insert(i * 3, 2 + i);
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "memory: {n} exceptions take {} in the chunk map, {:.1} bytes per exception (capacity {})",
            ByteSize(bytes as u64),
            bytes as f64 / n as f64,
            map.capacity()
        );
        drop(map);
    }
}

/// First writes: each allocates a chunk, copies the rest of it from the golden image and
/// commits the exception with the kernel's two flushes before completing. Measured over a
/// fixed number of distinct chunks (criterion's open-ended iteration would run out of them),
/// by one writer and by four (whose commits share flushes, as the kernel's pending batch does).
fn first_writes() {
    for threads in [1u64, 4] {
        let s = setup(2 * GOLDEN);
        let engine = std::sync::Arc::new(open(&s));
        let per_thread = 2000 / threads;
        let start = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let engine = engine.clone();
                std::thread::spawn(move || {
                    let data = vec![0xA5u8; 4096];
                    let mut latencies = Vec::new();
                    for i in 0..per_thread {
                        let chunk = ((t * per_thread + i) * 7919) % (GOLDEN / CHUNK);
                        let t0 = Instant::now();
                        engine.write_at(&data, chunk * CHUNK + 4096).unwrap();
                        latencies.push(t0.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let elapsed = start.elapsed();
        latencies.sort();
        let n = latencies.len();
        println!(
            "first 4KiB writes, {threads} writer(s): {n} new chunks in {:.2} s = {:.0} IOPS, latency p50 {:?} p99 {:?}",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            latencies[n / 2],
            latencies[n * 99 / 100]
        );
        assert_eq!(engine.exception_count(), n);
    }
}

/// The copy of a first write alone: commits wait for a flush (as the service runs the
/// engine), so each write is the copy of the rest of its chunk plus its own 4 KiB, done
/// file to file by the kernel and, in the same run, through a buffer.
fn first_write_copies() {
    let n = GOLDEN / CHUNK;
    let mut rates = Vec::new();
    for kernel_copies in [true, false] {
        let s = setup(2 * GOLDEN);
        let golden = FileBacking::open(&s.golden, false).unwrap();
        let golden: Box<dyn ReadAt + Send + Sync> = if kernel_copies {
            Box::new(golden)
        } else {
            Box::new(NoFile(golden))
        };
        let engine = open_with(golden, &s, CommitMode::OnFlush);
        let data = vec![0xA5u8; 4096];
        let start = Instant::now();
        for i in 0..n {
            let chunk = (i * 7919) % n;
            engine.write_at(&data, chunk * CHUNK + 4096).unwrap();
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        engine.flush().unwrap();
        let how = if kernel_copies {
            "copy_file_range"
        } else {
            "through a buffer"
        };
        println!("first 4KiB writes, commit at flush, {how}: {n} new chunks at {rate:.0} IOPS");
        rates.push(rate);
    }
    println!(
        "first 4KiB writes: copy_file_range / buffer = {:.2}x",
        rates[0] / rates[1]
    );
}

fn io(c: &mut Criterion) {
    memory_per_exception();
    first_writes();
    first_write_copies();
    let blocks = GOLDEN / 4096;
    let s = setup(2 * GOLDEN);
    let engine = open(&s);
    let mut group = c.benchmark_group("engine 4KiB");
    group.throughput(Throughput::Bytes(4096));
    group.measurement_time(Duration::from_secs(5));
    let mut buf = vec![0u8; 4096];

    let mut rng = Rng(1);
    group.bench_function("random read, golden (no exception)", |b| {
        b.iter(|| engine.read_at(&mut buf, rng.block(blocks)).unwrap())
    });

    // Map every chunk so the next two measure the remapped path.
    let whole = vec![0x5Au8; CHUNK as usize];
    for chunk in 0..GOLDEN / CHUNK {
        engine.write_at(&whole, chunk * CHUNK).unwrap();
    }
    engine.flush().unwrap();
    let mut rng = Rng(2);
    group.bench_function("random read, remapped chunk", |b| {
        b.iter(|| engine.read_at(&mut buf, rng.block(blocks)).unwrap())
    });
    let data = vec![0xA5u8; 4096];
    let mut rng = Rng(3);
    group.bench_function("random write, remapped chunk", |b| {
        b.iter(|| engine.write_at(&data, rng.block(blocks)).unwrap())
    });
    group.finish();
    println!(
        "engine: {} exceptions, status {}",
        engine.exception_count(),
        engine.usage()
    );
}

criterion_group!(benches, io);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
