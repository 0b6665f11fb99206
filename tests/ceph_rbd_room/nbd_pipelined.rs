//! NBD requests kept in flight together on an rbd clone (`nbd/inflight.rs`): one TCP write
//! of 56 requests (rounds of 8 writes of a pattern at 8 places, then 8 reads of them, a
//! FLUSH after each round's writes), then every reply read. Each handle is replied to once,
//! without an error, and every read sees the last write before it to its blocks, as if they
//! had run one at a time. Then fio's nbd engine writes at queue depth 16 and verifies.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::common::ceph::cluster;
use super::common::room::{Golden, Pc, RoomBuilder};

const REQUEST: u32 = 0x2560_9513;
const REPLY: u32 = 0x6744_6698;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const BLOCK: usize = 4096;
const BLOCK_LEN: u32 = 4096;

/// Fixed newstyle with no zeroes, NBD_OPT_EXPORT_NAME: the export's size.
fn handshake(s: &mut TcpStream, export: &str) -> u64 {
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend(1u32.to_be_bytes());
    opt.extend(u32::try_from(export.len()).unwrap().to_be_bytes());
    opt.extend(export.as_bytes());
    s.write_all(&opt).unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).unwrap();
    u64::from_be_bytes(info[..8].try_into().unwrap())
}

fn request(
    out: &mut Vec<u8>,
    kind: u16,
    handle: u64,
    offset: u64,
    data_or_len: Result<&[u8], u32>,
) {
    out.extend(REQUEST.to_be_bytes());
    out.extend(0u16.to_be_bytes());
    out.extend(kind.to_be_bytes());
    out.extend(handle.to_be_bytes());
    out.extend(offset.to_be_bytes());
    match data_or_len {
        Ok(data) => {
            out.extend(u32::try_from(data.len()).unwrap().to_be_bytes());
            out.extend(data);
        }
        Err(len) => out.extend(len.to_be_bytes()),
    }
}

#[test]
fn requests_in_flight_together_are_each_replied_once_and_reads_see_the_writes_before_them() {
    let c = cluster();
    c.golden("nbdpipe", "base", &vec![9; 8 << 20]);
    let room = RoomBuilder::userspace()
        .golden(Golden::Rbd("nbdpipe@base".into()))
        .extra(&c.section("nbdpipe"))
        .cow("8MiB", "4KiB")
        .export("nbd")
        .pc(Pc::new("pc-1"))
        .build();
    room.cowctl(&["apply"]);
    let mut s = TcpStream::connect(room.nbd()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(handshake(&mut s, "pc-1"), 8 << 20);

    // handle -> (the byte a read must see, or None for a write or flush)
    let mut expect: BTreeMap<u64, Option<u8>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut handle = 0u64;
    let place = |p: u64| p * 192 * 1024 + 4096;
    for round in 0..3u8 {
        for p in 0..8u64 {
            let byte = round * 8 + u8::try_from(p).unwrap() + 1;
            handle += 1;
            request(&mut out, 1, handle, place(p), Ok(&[byte; BLOCK]));
            expect.insert(handle, None);
        }
        handle += 1;
        request(&mut out, 3, handle, 0, Err(0));
        expect.insert(handle, None);
        for p in 0..8u64 {
            handle += 1;
            request(&mut out, 0, handle, place(p), Err(BLOCK_LEN));
            expect.insert(handle, Some(round * 8 + u8::try_from(p).unwrap() + 1));
        }
    }
    // Two more rounds' worth: rewrites of the same places, each read right after its write.
    for p in 0..4u8 {
        handle += 1;
        request(&mut out, 1, handle, place(p.into()), Ok(&[0xe0 + p; BLOCK]));
        expect.insert(handle, None);
        handle += 1;
        request(&mut out, 0, handle, place(p.into()), Err(BLOCK_LEN));
        expect.insert(handle, Some(0xe0 + p));
    }
    assert_eq!(expect.len(), 59);
    s.write_all(&out).unwrap();

    let mut seen = BTreeMap::new();
    while seen.len() < expect.len() {
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap();
        assert_eq!(u32::from_be_bytes(head[..4].try_into().unwrap()), REPLY);
        let error = u32::from_be_bytes(head[4..8].try_into().unwrap());
        let h = u64::from_be_bytes(head[8..].try_into().unwrap());
        assert_eq!(error, 0, "request {h} failed");
        let wants = *expect
            .get(&h)
            .unwrap_or_else(|| panic!("a reply to {h}, never asked"));
        let mut data = vec![];
        if wants.is_some() {
            data = vec![0u8; BLOCK];
            s.read_exact(&mut data).unwrap();
        }
        assert!(
            seen.insert(h, data).is_none(),
            "request {h} replied to twice"
        );
    }
    for (h, wants) in &expect {
        if let Some(byte) = wants {
            assert!(
                seen[h].iter().all(|b| b == byte),
                "read {h} saw {:#x}, not the {byte:#x} written before it",
                seen[h][0]
            );
        }
    }
    drop(s);

    // A real client at depth 16: fio writes and verifies every block.
    let fio = std::process::Command::new("fio")
        .args([
            "--name=v",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
        ])
        .args([
            "--size=4M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ])
        .arg(format!("--uri=nbd://{}/pc-1", room.nbd()))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&fio.stdout).to_string() + &String::from_utf8_lossy(&fio.stderr);
    assert!(fio.status.success() && !text.contains("verify"), "{text}");
    let log = room.log_so_far();
    assert!(!log.contains("WARN"), "{log}");
}
