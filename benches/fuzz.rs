//! A mutational fuzzer for every wire parser a network client (or a file) reaches: the NBD
//! handshake and transmission phase, the iSCSI PDU reader, login and full feature phase, AoE
//! frames, and the COW store loader. Each target runs `FUZZ_EXECS` inputs (default 10^6): seeds of valid
//! traffic mutated (bit flips, interesting values, inserts, deletes, splices, truncation)
//! plus purely random inputs, in memory, against disks that count any I/O outside their
//! bounds. Panics are caught, counted and their inputs kept in test-outputs/fuzz/. Prints a
//! table and fails when any target crashed or reached outside its disk.
//!   cargo bench --bench fuzz            (scripts/fuzz.sh runs it)

#![allow(clippy::cast_possible_truncation)] // fuzz inputs are small byte strings

use std::io::{self, BufReader, Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use cowctl::iscsi::chap::{Credentials, Secret};
use cowctl::iscsi::connection::{converse, AdmitAll, Line};
use cowctl::iscsi::pdu::Bhs;
use cowctl::iscsi::reader::{Digests, PduReader, PduWriter};
use cowctl::iscsi::scsi::Disk;
use cowctl::nbd::{self, Device, Errno, ExportInfo, Exports};

/// AoE request frames, as the AoE tests build them.
#[path = "../tests/common/aoe.rs"]
#[allow(dead_code)]
mod aoe_common;
/// The memory disk of the protocol tests.
#[path = "../tests/common/disk.rs"]
#[allow(dead_code)]
mod disk;
/// The in-memory initiator and one-PC portal of the iSCSI tests.
#[path = "../tests/common/iscsi.rs"]
#[allow(dead_code)]
mod iscsi_common;
use iscsi_common::{
    command, data_out, login, pdu, rw10, DiskRef, MemDisk, OnePc, DISK_SIZE as DISK,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutated input from the seeds (or, one time in eight, random bytes).
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(8) == 0 {
        let n = rng.below(600);
        return (0..n).map(|_| rng.next() as u8).collect();
    }
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let len = v.len().max(1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 if v.len() >= 4 => {
                // An interesting 32-bit value (a length, an offset, a count).
                let vals = [
                    0u32,
                    1,
                    0x7fff_ffff,
                    0x8000_0000,
                    0xffff_ffff,
                    0x0100_0000,
                    512,
                    0xffff,
                ];
                let i = rng.below(v.len() - 3);
                v[i..i + 4].copy_from_slice(&vals[rng.below(vals.len())].to_be_bytes());
            }
            3 => {
                let i = rng.below(len);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i.min(v.len())..i.min(v.len()), bytes);
            }
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i + 1);
                v.drain(i..i + n);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(len).min(v.len());
                let from = rng.below(other.len().max(1)).min(other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            6 if !v.is_empty() => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            _ => {
                if v.len() >= 2 {
                    let i = rng.below(v.len() - 1);
                    v.swap(i, i + 1);
                }
            }
        }
    }
    v
}

/// The test disk as an NBD device (it records any I/O outside its bounds).
struct NbdDisk(DiskRef);

impl Device for NbdDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Errno> {
        self.0.read_at(buf, offset).map_err(|_| Errno::Io)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Errno> {
        self.0.write_at(buf, offset).map_err(|_| Errno::Io)
    }
    fn flush(&self) -> Result<(), Errno> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno> {
        self.0.trim(offset, len).map_err(|_| Errno::Io)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _: bool) -> Result<(), Errno> {
        self.0.write_zeroes(offset, len).map_err(|_| Errno::Io)
    }
}

fn outside(disk: &MemDisk) -> u64 {
    disk.out_of_bounds.lock().unwrap().len() as u64
}

struct OneExport;

impl Exports for OneExport {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        (name == "pc").then(|| ExportInfo {
            size: DISK,
            read_only: false,
            preferred_block: 4096,
            description: "fuzz".into(),
        })
    }
    fn names(&self) -> Vec<String> {
        vec!["pc".into()]
    }
}

/// Input bytes in, output bytes out.
struct Duplex<'a> {
    input: Cursor<&'a [u8]>,
    output: Vec<u8>,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Bounded: a target that answered without end would show here.
        if self.output.len() > 64 << 20 {
            return Err(io::ErrorKind::Other.into());
        }
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Memory;

impl Line for Memory {
    fn set_read_timeout(&self, _: Option<std::time::Duration>) -> io::Result<()> {
        Ok(())
    }
    fn set_deadline(&self, _: Option<std::time::Instant>) {}
    fn closer(&self) -> io::Result<Box<dyn Fn() + Send>> {
        Ok(Box::new(|| {}))
    }
}

fn iscsi(input: &[u8], chap: bool) -> u64 {
    let mut pc = OnePc::open();
    if chap {
        pc.chap = Some(Credentials {
            initiator: Secret {
                username: "pc".into(),
                secret: "initiator-secret".into(),
            },
            target: Some(Secret {
                username: "t".into(),
                secret: "target-secret-1".into(),
            }),
        });
    }
    let mut out = Vec::new();
    let _ = converse(
        PduReader::new(Cursor::new(input), 64 << 10),
        PduWriter::new(&mut out),
        &Memory,
        "127.0.0.1:1".parse().unwrap(),
        None,
        &pc,
        &mut AdmitAll,
    );
    outside(&pc.disk)
}

// ---- seeds ----

/// A Login Request whose text is `key=value;` pairs (`;` for the NUL).
fn lg(csg: u8, nsg: u8, transit: bool, text: &str) -> Vec<u8> {
    login(csg, nsg, transit, 1, text.replace(';', "\0").as_bytes())
}

/// A SCSI command that reads, or writes with immediate data.
fn cmd(itt: u32, sn: u32, cdb: &[u8], len: u32, read: bool, data: &[u8]) -> Vec<u8> {
    command(itt, sn, cdb, len, read, !read, data)
}

fn iscsi_seeds() -> Vec<Vec<u8>> {
    let lead = lg(1, 3, true, "InitiatorName=iqn.x:i;TargetName=iqn.2024-01.lan.test:pc;SessionType=Normal;MaxRecvDataSegmentLength=65536;MaxBurstLength=16384;FirstBurstLength=8192;ImmediateData=Yes;");
    let mut seeds = vec![lead.clone()];
    let mut s = lead.clone();
    s.extend(cmd(1, 1, &[0x12, 0, 0, 0, 96, 0], 96, true, &[]));
    s.extend(cmd(2, 2, &rw10(0x28, 8, 4), 2048, true, &[]));
    s.extend(cmd(3, 3, &rw10(0x2a, 0, 32), 16384, false, &[7; 4096]));
    s.extend(data_out(3, 1, 0, 4096, true, &[8; 12288]));
    s.extend(cmd(4, 4, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, false, &[]));
    seeds.push(s);
    let mut s = lead.clone();
    let mut unmap = vec![0, 22, 0, 16, 0, 0, 0, 0];
    unmap.extend_from_slice(&8u64.to_be_bytes());
    unmap.extend_from_slice(&16u32.to_be_bytes());
    unmap.extend_from_slice(&[0; 4]);
    s.extend(cmd(
        1,
        1,
        &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        24,
        false,
        &unmap,
    ));
    let mut ws = vec![0x93, 0x08];
    ws.extend_from_slice(&0u64.to_be_bytes());
    ws.extend_from_slice(&64u32.to_be_bytes());
    ws.extend_from_slice(&[0, 0]);
    s.extend(cmd(2, 2, &ws, 512, false, &[0; 512]));
    s.extend(cmd(3, 3, &[0x1a, 0, 0x3f, 0, 255, 0], 255, true, &[]));
    let mut tmf = Bhs::default();
    tmf.0[0] = 0x42;
    tmf.0[1] = 0x81;
    tmf.set_u32(16, 9);
    tmf.set_u32(20, 3);
    s.extend(pdu(&tmf, &[]));
    let mut text = Bhs::default();
    text.0[0] = 0x44;
    text.0[1] = 0x80;
    text.set_u32(20, 0xffff_ffff);
    s.extend(pdu(&text, b"SendTargets=All\0"));
    let mut logout = Bhs::default();
    logout.0[0] = 0x46;
    logout.0[1] = 0x80;
    s.extend(pdu(&logout, &[]));
    seeds.push(s);
    seeds
}

fn login_seeds() -> Vec<Vec<u8>> {
    let mut chap = lg(
        0,
        1,
        true,
        "InitiatorName=iqn.x:i;TargetName=iqn.2024-01.lan.test:pc;AuthMethod=CHAP,None;",
    );
    chap.extend(lg(0, 1, false, "CHAP_A=5;"));
    chap.extend(lg(
        0,
        1,
        true,
        "CHAP_N=pc;CHAP_R=0x00112233445566778899aabbccddeeff;CHAP_I=1;CHAP_C=0x0102030405060708;",
    ));
    chap.extend(lg(
        1,
        3,
        true,
        "HeaderDigest=CRC32C,None;DataDigest=None;MaxRecvDataSegmentLength=8192;",
    ));
    let discovery = lg(
        0,
        3,
        true,
        "InitiatorName=iqn.x:i;SessionType=Discovery;AuthMethod=None;",
    );
    let mut cont = lg(0, 1, false, "InitiatorName=iqn.x:i;TargetNa");
    cont[1] |= 0x40;
    cont.extend(lg(
        0,
        1,
        true,
        "me=iqn.2024-01.lan.test:pc;AuthMethod=CHAP;",
    ));
    vec![chap, discovery, cont]
}

fn nbd_handshake_seeds() -> Vec<Vec<u8>> {
    let opt = |kind: u32, data: &[u8]| {
        let mut v = 0x4948_4156_454F_5054u64.to_be_bytes().to_vec();
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    };
    let go = {
        let mut d = 2u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"pc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        d
    };
    let mut a = 3u32.to_be_bytes().to_vec();
    a.extend(opt(3, &[]));
    a.extend(opt(6, &go));
    a.extend(opt(7, &go));
    let mut b = 1u32.to_be_bytes().to_vec();
    b.extend(opt(1, b"pc"));
    let mut c = 3u32.to_be_bytes().to_vec();
    c.extend(opt(99, &[1, 2, 3]));
    c.extend(opt(2, &[]));
    vec![a, b, c]
}

fn nbd_transmission_seeds() -> Vec<Vec<u8>> {
    let req = |cmd: u16, flags: u16, offset: u64, len: u32| {
        let mut v = 0x2560_9513u32.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&cmd.to_be_bytes());
        v.extend_from_slice(&7u64.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    };
    let mut a = req(1, 1, 4096, 4096);
    a.extend(vec![3; 4096]);
    a.extend(req(0, 0, 0, 65536));
    a.extend(req(3, 0, 0, 0));
    a.extend(req(4, 0, 8192, 4096));
    a.extend(req(6, 2, 0, 8192));
    a.extend(req(2, 0, 0, 0));
    let mut b = req(0, 0, DISK - 512, 512);
    b.extend(req(1, 0, DISK - 4, 8));
    b.extend(vec![1; 8]);
    vec![a, b]
}

fn aoe_seeds() -> Vec<Vec<u8>> {
    use aoe_common::{ata, config, mask, resrel, PC_MAC, SHELF, SLOT};
    vec![
        ata(0xec, 0, 1, &[]),
        ata(0x20, 5, 2, &[]),
        ata(0x24, 8000, 17, &[]),
        ata(0x30, 7, 1, &[0xa5; 512]),
        ata(0x34, 1 << 20, 2, &[0x5a; 1024]),
        ata(0xe7, 0, 0, &[]),
        ata(0xe5, 0, 0, &[]),
        config(PC_MAC, 0xffff, 0xff, 0, b""),
        config(PC_MAC, SHELF, SLOT, 3, b"lab"),
        config(PC_MAC, SHELF, SLOT, 2, b"la"),
        mask(0, &[]),
        mask(1, &[(1, [2, 0, 0, 0, 0, 9]), (2, PC_MAC)]),
        resrel(PC_MAC, 1, &[PC_MAC]),
        resrel(PC_MAC, 2, &[]),
    ]
}

/// One frame to the PC's target; an answer larger than the interface carries counts as
/// reaching outside, like I/O outside the disk.
fn aoe_frame(input: &[u8]) -> u64 {
    let Some(h) = cowctl::aoe::wire::Header::parse(input) else {
        return 0;
    };
    let unit = aoe_common::unit();
    // One disk for every input (a fresh 4 MiB disk each time would be most of the work):
    // only its out-of-bounds record has to start empty.
    thread_local!(static AOE_DISK: std::sync::Arc<MemDisk> = MemDisk::new());
    let disk = AOE_DISK.with(std::sync::Arc::clone);
    disk.out_of_bounds.lock().unwrap().clear();
    let port = aoe_common::port(if input.len().is_multiple_of(2) {
        1500
    } else {
        9000
    });
    if !unit.addressed(&h) || !unit.admits(&h.src) {
        return 0;
    }
    let oversized = unit
        .answer(&h, input, &DiskRef(disk.clone()), &port)
        .is_some_and(|a| a.len() > port.mtu + 14);
    outside(&disk) + u64::from(oversized)
}

fn cow_seeds() -> Vec<Vec<u8>> {
    use cowctl::cow::{DiskException, Geometry, Header};
    let mut out = Vec::new();
    for (chunk, chunks) in [(8u32, 16u64), (16, 8), (1, 600)] {
        let g = Geometry::new(chunk).unwrap();
        let mut v = vec![0u8; (chunks * g.chunk_bytes()) as usize];
        v[..16].copy_from_slice(&Header::new(chunk, true).encode());
        let area = g.offset(g.area_location(0)) as usize;
        for i in 0..3u64 {
            DiskException {
                old_chunk: i * 3,
                new_chunk: 2 + i,
            }
            .encode_into(&mut v[area + 16 * i as usize..area + 16 * (i as usize + 1)]);
        }
        out.push(v);
    }
    out
}

/// Runs one input; returns the count of I/O outside the disk.
type Run = Box<dyn Fn(&[u8]) -> u64>;

struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: Run,
}

fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "nbd handshake",
            seeds: nbd_handshake_seeds(),
            run: Box::new(|input| {
                let mut d = Duplex {
                    input: Cursor::new(input),
                    output: Vec::new(),
                };
                let _ = nbd::handshake(&mut d, &OneExport);
                0
            }),
        },
        Target {
            name: "nbd transmission",
            seeds: nbd_transmission_seeds(),
            run: Box::new(|input| {
                let disk = MemDisk::new();
                let device = NbdDisk(DiskRef(disk.clone()));
                let mut r = BufReader::new(input);
                let mut w: Vec<u8> = Vec::new();
                let _ = nbd::serve(&mut r, &mut w, &device, DISK, input.first() == Some(&0));
                outside(&disk)
            }),
        },
        Target {
            name: "iscsi pdu reader",
            seeds: iscsi_seeds(),
            run: Box::new(|input| {
                let digests = Digests {
                    header: input.first().is_some_and(|b| b & 1 != 0),
                    data: input.first().is_some_and(|b| b & 2 != 0),
                };
                let mut r = PduReader::new(input, 8192);
                r.set_limits(65536, digests);
                for _ in 0..64 {
                    if r.read_pdu().is_err() {
                        break;
                    }
                }
                0
            }),
        },
        Target {
            name: "iscsi login",
            seeds: login_seeds(),
            run: Box::new(|input| iscsi(input, true)),
        },
        Target {
            name: "iscsi session",
            seeds: iscsi_seeds(),
            run: Box::new(|input| iscsi(input, false)),
        },
        Target {
            name: "aoe frame",
            seeds: aoe_seeds(),
            run: Box::new(aoe_frame),
        },
        Target {
            name: "cow store",
            seeds: cow_seeds(),
            run: Box::new(|input| {
                let m = cowctl::engine::backing::MemBacking::new(input.to_vec());
                let chunk = match input.len() % 3 {
                    0 => None,
                    1 => Some(8),
                    _ => Some(1 << 20),
                };
                let _ = cowctl::cow::LoadedStore::load(&m, chunk);
                0
            }),
        },
    ]
}

fn main() {
    let execs: u64 = std::env::var("FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-outputs/fuzz");
    std::fs::create_dir_all(&out_dir).unwrap();
    // Panics are the findings: counted, not printed.
    std::panic::set_hook(Box::new(|_| {}));
    println!("| target | executions | seconds | executions/s | crashes | I/O outside the disk |");
    println!("|---|---|---|---|---|---|");
    let mut bad = false;
    for t in targets() {
        if only.as_deref().is_some_and(|o| !t.name.contains(o)) {
            continue;
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ t.name.len() as u64);
        let (mut crashes, mut outside) = (0u64, 0u64);
        let start = Instant::now();
        for i in 0..execs {
            let input = mutate(&mut rng, &t.seeds);
            match catch_unwind(AssertUnwindSafe(|| (t.run)(&input))) {
                Ok(n) if n > 0 => {
                    outside += n;
                    let _ = std::fs::write(
                        out_dir.join(format!("{}-outside-{i}.bin", t.name.replace(' ', "-"))),
                        &input,
                    );
                }
                Ok(_) => {}
                Err(_) => {
                    crashes += 1;
                    let _ = std::fs::write(
                        out_dir.join(format!("{}-crash-{i}.bin", t.name.replace(' ', "-"))),
                        &input,
                    );
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "| {} | {execs} | {secs:.1} | {:.0} | {crashes} | {outside} |",
            t.name,
            execs as f64 / secs
        );
        bad |= crashes > 0 || outside > 0;
    }
    if bad {
        eprintln!(
            "fuzz: crashes or out-of-bounds I/O; inputs kept in {}",
            out_dir.display()
        );
        std::process::exit(1);
    }
}
