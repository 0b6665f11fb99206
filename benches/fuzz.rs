//! A mutational fuzzer for every wire parser a network client (or a file) reaches: the NBD
//! handshake and transmission phase, the iSCSI PDU reader, login and full feature phase, and
//! the COW store loader. Each target runs `FUZZ_EXECS` inputs (default 10^6): seeds of valid
//! traffic mutated (bit flips, interesting values, inserts, deletes, splices, truncation)
//! plus purely random inputs, in memory, against disks that count any I/O outside their
//! bounds. Panics are caught, counted and their inputs kept in test-outputs/fuzz/. Prints a
//! table and fails when any target crashed or reached outside its disk.
//!   cargo bench --bench fuzz            (scripts/fuzz.sh runs it)

#![allow(clippy::cast_possible_truncation)] // fuzz inputs are small byte strings

use std::io::{self, BufReader, Cursor, Read, Write};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cowctl::iscsi::chap::{Credentials, Secret};
use cowctl::iscsi::connection::{converse, Line};
use cowctl::iscsi::login::{Access, Directory, Established};
use cowctl::iscsi::pdu::{Bhs, LoginStatus};
use cowctl::iscsi::reader::{Digests, PduReader, PduWriter};
use cowctl::iscsi::scsi::{Disk, DiskError, Identity, Lu, Reservation};
use cowctl::iscsi::{Attachment, Portal};
use cowctl::nbd::{self, Device, Errno, ExportInfo, Exports};

const DISK: u64 = 1 << 20;

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

/// A disk of `DISK` bytes that counts I/O outside its bounds.
#[derive(Default)]
struct MemDisk {
    bytes: Mutex<Vec<u8>>,
    outside: AtomicU64,
}

impl MemDisk {
    fn new() -> Arc<MemDisk> {
        Arc::new(MemDisk {
            bytes: Mutex::new(vec![0x5a; DISK as usize]),
            outside: AtomicU64::new(0),
        })
    }
    fn range(&self, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= DISK => Some(offset as usize..end as usize),
            _ => {
                self.outside.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Device for MemDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Errno> {
        let r = self.range(offset, buf.len()).ok_or(Errno::Io)?;
        buf.copy_from_slice(&self.bytes.lock().unwrap()[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Errno> {
        let r = self.range(offset, buf.len()).ok_or(Errno::Io)?;
        self.bytes.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), Errno> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno> {
        self.range(offset, len as usize).map(drop).ok_or(Errno::Io)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _: bool) -> Result<(), Errno> {
        self.range(offset, len as usize).map(drop).ok_or(Errno::Io)
    }
}

struct DiskRef(Arc<MemDisk>);

impl Disk for DiskRef {
    fn size(&self) -> u64 {
        DISK
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        Device::read_at(self.0.as_ref(), buf, offset).map_err(|_| DiskError::Io)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        Device::write_at(self.0.as_ref(), buf, offset).map_err(|_| DiskError::Io)
    }
    fn flush(&self) -> Result<(), DiskError> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        Device::trim(self.0.as_ref(), offset, len).map_err(|_| DiskError::Io)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        Device::write_zeroes(self.0.as_ref(), offset, len, false).map_err(|_| DiskError::Io)
    }
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

const TARGET: &str = "iqn.2024-01.lan.fuzz:pc";

/// One PC's target; CHAP when `chap`.
struct OnePc {
    disk: Arc<MemDisk>,
    chap: bool,
}

impl Directory for OnePc {
    fn access(&self, target: &str, _initiator: &str) -> Result<Access, LoginStatus> {
        if target != TARGET {
            return Err(LoginStatus::NOT_FOUND);
        }
        Ok(Access {
            target: target.into(),
            chap: self.chap.then(|| Credentials {
                initiator: Secret {
                    username: "pc".into(),
                    secret: "initiator-secret".into(),
                },
                target: Some(Secret {
                    username: "t".into(),
                    secret: "target-secret-1".into(),
                }),
            }),
        })
    }
    fn visible(&self, _: &str) -> Vec<String> {
        vec![TARGET.into()]
    }
}

impl Portal for OnePc {
    fn directory(&self) -> &dyn Directory {
        self
    }
    fn attach(
        &self,
        _: &Established,
        _: SocketAddr,
        _: Box<dyn Fn() + Send>,
    ) -> Result<Attachment, LoginStatus> {
        Ok(Attachment {
            lu: Arc::new(Lu::new(
                Identity::for_pc("pc", TARGET),
                Arc::new(Reservation::default()),
                Box::new(DiskRef(self.disk.clone())),
            )),
            nexus: 1,
            guard: Box::new(()),
        })
    }
    fn portals(&self) -> Vec<SocketAddr> {
        vec!["0.0.0.0:3260".parse().unwrap()]
    }
}

struct Memory;

impl Line for Memory {
    fn set_read_timeout(&self, _: Option<std::time::Duration>) -> io::Result<()> {
        Ok(())
    }
    fn closer(&self) -> io::Result<Box<dyn Fn() + Send>> {
        Ok(Box::new(|| {}))
    }
}

fn iscsi(input: &[u8], chap: bool) -> u64 {
    let pc = OnePc {
        disk: MemDisk::new(),
        chap,
    };
    let mut out = Vec::new();
    let _ = converse(
        PduReader::new(Cursor::new(input), 64 << 10),
        PduWriter::new(&mut out),
        &Memory,
        "127.0.0.1:1".parse().unwrap(),
        None,
        &pc,
    );
    pc.disk.outside.load(Ordering::Relaxed)
}

// ---- seeds ----

fn pdu(b: &Bhs, data: &[u8]) -> Vec<u8> {
    let mut b = *b;
    b.set_data_len(data.len());
    let mut v = b.0.to_vec();
    v.extend_from_slice(data);
    v.resize(v.len() + (4 - data.len() % 4) % 4, 0);
    v
}

fn login(csg: u8, nsg: u8, transit: bool, text: &str) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = 0x43;
    b.0[1] = (u8::from(transit) << 7) | (csg << 2) | nsg;
    b.0[8] = 0x80;
    b.set_u32(24, 1);
    pdu(&b, text.replace(';', "\0").as_bytes())
}

fn command(itt: u32, sn: u32, cdb: &[u8], len: u32, read: bool, data: &[u8]) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = 0x01;
    b.0[1] = 0x80 | if read { 0x40 } else { 0x20 };
    b.set_u32(16, itt);
    b.set_u32(20, len);
    b.set_u32(24, sn);
    b.0[32..32 + cdb.len()].copy_from_slice(cdb);
    pdu(&b, data)
}

fn data_out(itt: u32, ttt: u32, offset: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = 0x05;
    b.0[1] = 0x80;
    b.set_u32(16, itt);
    b.set_u32(20, ttt);
    b.set_u32(40, offset);
    pdu(&b, data)
}

fn iscsi_seeds() -> Vec<Vec<u8>> {
    let lead = login(1, 3, true, "InitiatorName=iqn.x:i;TargetName=iqn.2024-01.lan.fuzz:pc;SessionType=Normal;MaxRecvDataSegmentLength=65536;MaxBurstLength=16384;FirstBurstLength=8192;ImmediateData=Yes;");
    let mut seeds = vec![lead.clone()];
    let rw10 = |op: u8, lba: u32, n: u16| {
        let mut c = vec![op, 0];
        c.extend_from_slice(&lba.to_be_bytes());
        c.push(0);
        c.extend_from_slice(&n.to_be_bytes());
        c.push(0);
        c
    };
    let mut s = lead.clone();
    s.extend(command(1, 1, &[0x12, 0, 0, 0, 96, 0], 96, true, &[]));
    s.extend(command(2, 2, &rw10(0x28, 8, 4), 2048, true, &[]));
    s.extend(command(3, 3, &rw10(0x2a, 0, 32), 16384, false, &[7; 4096]));
    s.extend(data_out(3, 1, 4096, &[8; 12288]));
    s.extend(command(
        4,
        4,
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        0,
        false,
        &[],
    ));
    seeds.push(s);
    let mut s = lead.clone();
    let mut unmap = vec![0, 22, 0, 16, 0, 0, 0, 0];
    unmap.extend_from_slice(&8u64.to_be_bytes());
    unmap.extend_from_slice(&16u32.to_be_bytes());
    unmap.extend_from_slice(&[0; 4]);
    s.extend(command(
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
    s.extend(command(2, 2, &ws, 512, false, &[0; 512]));
    s.extend(command(3, 3, &[0x1a, 0, 0x3f, 0, 255, 0], 255, true, &[]));
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
    let mut chap = login(
        0,
        1,
        true,
        "InitiatorName=iqn.x:i;TargetName=iqn.2024-01.lan.fuzz:pc;AuthMethod=CHAP,None;",
    );
    chap.extend(login(0, 1, false, "CHAP_A=5;"));
    chap.extend(login(
        0,
        1,
        true,
        "CHAP_N=pc;CHAP_R=0x00112233445566778899aabbccddeeff;CHAP_I=1;CHAP_C=0x0102030405060708;",
    ));
    chap.extend(login(
        1,
        3,
        true,
        "HeaderDigest=CRC32C,None;DataDigest=None;MaxRecvDataSegmentLength=8192;",
    ));
    let discovery = login(
        0,
        3,
        true,
        "InitiatorName=iqn.x:i;SessionType=Discovery;AuthMethod=None;",
    );
    let mut cont = login(0, 1, false, "InitiatorName=iqn.x:i;TargetNa");
    cont[1] |= 0x40;
    cont.extend(login(
        0,
        1,
        true,
        "me=iqn.2024-01.lan.fuzz:pc;AuthMethod=CHAP;",
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
                let mut r = BufReader::new(input);
                let mut w: Vec<u8> = Vec::new();
                let _ = nbd::serve(
                    &mut r,
                    &mut w,
                    disk.as_ref(),
                    DISK,
                    input.first() == Some(&0),
                );
                disk.outside.load(Ordering::Relaxed)
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
            name: "cow store",
            seeds: cow_seeds(),
            run: Box::new(|input| {
                let m = cowctl::backing::MemBacking::new(input.to_vec());
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
