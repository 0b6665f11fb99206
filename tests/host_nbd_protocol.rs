//! The NBD server's protocol in memory: the handshake's replies byte for byte, every refusal
//! of the transmission phase, and fuzzing of both with random and mutated streams — no
//! panic, no device I/O outside the export, no buffer sized by the client past the cap.

#![allow(clippy::cast_possible_truncation)] // tests build small byte streams

use std::io::{BufReader, Cursor, Read, Write};
use std::sync::Mutex;

use cowctl::nbd::wire::*;
use cowctl::nbd::{handshake, serve, Device, End, Errno, ExportInfo, Exports, Outcome};
use proptest::prelude::*;

const SIZE: u64 = 1 << 20;

/// A memory disk that refuses (and records) any I/O outside its bounds.
struct MemDisk {
    bytes: Mutex<Vec<u8>>,
    out_of_bounds: Mutex<Vec<(u64, u64)>>,
    flushes: Mutex<u32>,
}

impl MemDisk {
    fn new() -> MemDisk {
        MemDisk {
            bytes: Mutex::new((0..SIZE).map(|i| (i % 251) as u8).collect()),
            out_of_bounds: Mutex::new(Vec::new()),
            flushes: Mutex::new(0),
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(usize, usize), Errno> {
        match offset.checked_add(len) {
            Some(end) if end <= SIZE => Ok((offset as usize, end as usize)),
            _ => {
                self.out_of_bounds.lock().unwrap().push((offset, len));
                Err(Errno::Io)
            }
        }
    }
}

impl Device for MemDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Errno> {
        let (a, b) = self.check(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.bytes.lock().unwrap()[a..b]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Errno> {
        let (a, b) = self.check(offset, buf.len() as u64)?;
        self.bytes.lock().unwrap()[a..b].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), Errno> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno> {
        self.check(offset, len).map(drop)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _no_hole: bool) -> Result<(), Errno> {
        let (a, b) = self.check(offset, len)?;
        self.bytes.lock().unwrap()[a..b].fill(0);
        Ok(())
    }
}

struct OneExport {
    read_only: bool,
}

impl Exports for OneExport {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        (name == "pc-1").then(|| ExportInfo {
            size: SIZE,
            read_only: self.read_only,
            preferred_block: 4096,
            description: "test".into(),
        })
    }
    fn names(&self) -> Vec<String> {
        vec!["pc-1".into()]
    }
}

/// A scripted client: what it sends, and what the server wrote back.
struct Duplex {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a whole session: handshake, then transmission if the client chose the export.
fn session(input: Vec<u8>, read_only: bool, disk: &MemDisk) -> (Vec<u8>, Option<End>) {
    let mut d = Duplex {
        input: Cursor::new(input),
        output: Vec::new(),
    };
    let end = match handshake(&mut d, &OneExport { read_only }) {
        Ok(Outcome::Go { info, .. }) => {
            let mut r = BufReader::new(&mut d.input);
            serve(&mut r, &mut d.output, disk, info.size, info.read_only).ok()
        }
        _ => None,
    };
    (d.output, end)
}

fn client_flags(f: u32) -> Vec<u8> {
    f.to_be_bytes().to_vec()
}

fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn go(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    option(OPT_GO, &d)
}

fn request(flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&cmd.to_be_bytes());
    v.extend_from_slice(&handle.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// Parses option replies until the final one; returns (reply type, data) pairs and the rest.
fn option_replies(mut out: &[u8]) -> (Vec<(u32, Vec<u8>)>, &[u8]) {
    let mut replies = Vec::new();
    loop {
        assert_eq!(be64(&out[0..8]), REPLY_MAGIC);
        let kind = be32(&out[12..16]);
        let len = be32(&out[16..20]) as usize;
        replies.push((kind, out[20..20 + len].to_vec()));
        out = &out[20 + len..];
        if kind != REP_INFO && kind != REP_SERVER {
            return (replies, out);
        }
    }
}

/// One simple reply: handle, error, and a read's data.
type Reply = (u64, u32, Vec<u8>);

/// Simple replies: (handle, error, data for reads of `read_len`).
fn simple_replies(mut out: &[u8], read_lens: &[(u64, usize)]) -> Vec<Reply> {
    let mut v = Vec::new();
    while !out.is_empty() {
        assert_eq!(be32(&out[0..4]), SIMPLE_REPLY_MAGIC);
        let err = be32(&out[4..8]);
        let handle = be64(&out[8..16]);
        out = &out[16..];
        let n = match read_lens.iter().find(|(h, _)| *h == handle) {
            Some((_, n)) if err == 0 => *n,
            _ => 0,
        };
        v.push((handle, err, out[..n].to_vec()));
        out = &out[n..];
    }
    v
}

#[test]
fn go_gets_export_info_block_sizes_and_name_then_io_works() {
    let disk = MemDisk::new();
    let mut input = client_flags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
    input.extend(go("pc-1", &[INFO_NAME]));
    let mut payload = request(0, 1, 1, 4096, 8);
    payload.extend_from_slice(b"cowctl!!");
    input.extend(payload);
    input.extend(request(0, 0, 2, 4092, 16));
    input.extend(request(CMD_FLAG_FUA, 6, 3, 0, 512));
    input.extend(request(0, 3, 4, 0, 0));
    input.extend(request(0, 4, 5, 8192, 4096));
    input.extend(request(0, 2, 6, 0, 0));
    let (out, end) = session(input, false, &disk);
    assert_eq!(end, Some(End::Disconnected));
    assert_eq!(be64(&out[0..8]), NBDMAGIC);
    assert_eq!(be64(&out[8..16]), IHAVEOPT);
    assert_eq!(be16(&out[16..18]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    let (replies, rest) = option_replies(&out[18..]);
    let export = &replies[0].1;
    assert_eq!(be16(&export[0..2]), INFO_EXPORT);
    assert_eq!(be64(&export[2..10]), SIZE);
    let flags = be16(&export[10..12]);
    for f in [
        TF_HAS_FLAGS,
        TF_SEND_FLUSH,
        TF_SEND_FUA,
        TF_SEND_TRIM,
        TF_SEND_WRITE_ZEROES,
        TF_CAN_MULTI_CONN,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x} in {flags:#x}");
    }
    assert_eq!(flags & TF_READ_ONLY, 0);
    let sizes = &replies[1].1;
    assert_eq!(be16(&sizes[0..2]), INFO_BLOCK_SIZE);
    assert_eq!(
        (
            be32(&sizes[2..6]),
            be32(&sizes[6..10]),
            be32(&sizes[10..14])
        ),
        (1, 4096, MAX_PAYLOAD)
    );
    assert_eq!(
        replies[2].1,
        [&INFO_NAME.to_be_bytes()[..], b"pc-1"].concat()
    );
    assert_eq!(replies[3].0, REP_ACK);
    let r = simple_replies(rest, &[(2, 16)]);
    assert_eq!(
        r.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
        [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]
    );
    let mut want: Vec<u8> = (4092..4096u64).map(|i| (i % 251) as u8).collect();
    want.extend_from_slice(b"cowctl!!");
    want.extend((4104..4108u64).map(|i| (i % 251) as u8));
    assert_eq!(r[1].2, want);
    assert!(disk.bytes.lock().unwrap()[..512].iter().all(|&b| b == 0));
    assert_eq!(
        *disk.flushes.lock().unwrap(),
        2,
        "the FUA zero and the FLUSH"
    );
}

#[test]
fn export_name_gives_size_and_flags_with_or_without_zeroes() {
    for (flags, pad) in [
        (CLIENT_FIXED_NEWSTYLE, 124),
        (CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES, 0),
    ] {
        let mut input = client_flags(flags);
        input.extend(option(OPT_EXPORT_NAME, b"pc-1"));
        let (out, end) = session(input, true, &MemDisk::new());
        assert_eq!(end, Some(End::Disconnected));
        assert_eq!(out.len(), 18 + 10 + pad);
        assert_eq!(be64(&out[18..26]), SIZE);
        assert_ne!(be16(&out[26..28]) & TF_READ_ONLY, 0);
    }
}

#[test]
fn unknown_exports_are_refused_and_the_client_may_try_again() {
    let mut input = client_flags(CLIENT_FIXED_NEWSTYLE);
    input.extend(go("pc-9", &[]));
    input.extend(option(OPT_LIST, &[]));
    input.extend(option(99, b"whatever"));
    input.extend(option(OPT_LIST, b"x"));
    input.extend(option(OPT_ABORT, &[]));
    let (out, end) = session(input, false, &MemDisk::new());
    assert_eq!(end, None);
    let (r, rest) = option_replies(&out[18..]);
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].1).contains("pc-9"));
    let (r, rest) = option_replies(rest);
    assert_eq!(
        r[0],
        (REP_SERVER, [&4u32.to_be_bytes()[..], b"pc-1"].concat())
    );
    assert_eq!(r[1].0, REP_ACK);
    let (r, rest) = option_replies(rest);
    assert_eq!(r[0].0, REP_ERR_UNSUP);
    let (r, rest) = option_replies(rest);
    assert_eq!(r[0].0, REP_ERR_INVALID);
    let (r, _) = option_replies(rest);
    assert_eq!(r[0].0, REP_ACK, "abort is acknowledged");

    // NBD_OPT_EXPORT_NAME has no error reply: the server closes.
    let mut input = client_flags(CLIENT_FIXED_NEWSTYLE);
    input.extend(option(OPT_EXPORT_NAME, b"pc-9"));
    let (out, end) = session(input, false, &MemDisk::new());
    assert_eq!((out.len(), end), (18, None));
}

#[test]
fn malformed_handshakes_are_refused_without_allocating_what_they_claim() {
    let hs = |input: Vec<u8>| {
        let mut d = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        (handshake(&mut d, &OneExport { read_only: false }), d.output)
    };
    assert!(hs(client_flags(0x80)).0.is_err(), "unknown client flags");
    let mut bad_magic = client_flags(1);
    bad_magic.extend_from_slice(&[0u8; 16]);
    assert!(hs(bad_magic).0.is_err());
    // An option claiming 4 GiB of data: skipped as it arrives (here it stops early) and
    // never allocated.
    let mut huge = client_flags(1);
    huge.extend_from_slice(&IHAVEOPT.to_be_bytes());
    huge.extend_from_slice(&OPT_GO.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    huge.extend_from_slice(&[0u8; 100]);
    assert!(hs(huge).0.is_err());
    // Longer than legal but sent in full: refused with TOO_BIG, and the client goes on.
    let mut long = client_flags(1);
    long.extend(option(OPT_GO, &vec![0u8; 20 << 10]));
    long.extend(go("pc-1", &[]));
    let (r, out) = hs(long);
    assert!(matches!(r, Ok(Outcome::Go { .. })));
    assert_eq!(option_replies(&out[18..]).0[0].0, REP_ERR_TOO_BIG);
    // GO data whose name length points past the end, or whose count does not match.
    for data in [
        vec![0, 0, 0, 200, b'p', 0, 0],
        [&4u32.to_be_bytes()[..], b"pc-1", &[0, 3, 0, 1]].concat(),
        vec![0, 0],
    ] {
        let mut input = client_flags(1);
        input.extend(option(OPT_GO, &data));
        let (_, out) = hs(input);
        assert_eq!(
            option_replies(&out[18..]).0[0].0,
            REP_ERR_INVALID,
            "{data:?}"
        );
    }
    // Endless options are cut off.
    let mut many = client_flags(1);
    for _ in 0..100 {
        many.extend(option(OPT_LIST, &[]));
    }
    assert!(hs(many).0.is_err());
}

/// Replies to `requests` after a GO; `reads` names the handles of successful reads and
/// their lengths, so their data can be told from the next reply.
fn transmit(
    requests: Vec<u8>,
    read_only: bool,
    reads: &[(u64, usize)],
) -> (Vec<Reply>, Option<End>, MemDisk) {
    let disk = MemDisk::new();
    let mut input = client_flags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
    input.extend(go("pc-1", &[]));
    input.extend(requests);
    let (out, end) = session(input, read_only, &disk);
    let (_, rest) = option_replies(&out[18..]);
    (simple_replies(rest, reads), end, disk)
}

#[test]
fn every_bad_request_gets_the_specs_error_and_touches_nothing() {
    let e = |x: Errno| x as u32;
    let mut reqs = Vec::new();
    reqs.extend(request(0, 0, 1, SIZE - 4, 8)); // read past the end
    reqs.extend(request(0, 0, 2, u64::MAX - 2, 8)); // offset + length wraps
    reqs.extend(request(0, 0, 3, 0, u32::MAX)); // a 4 GiB read: refused, not allocated
    let mut w = request(0, 1, 4, SIZE - 4, 8); // write past the end: payload still consumed
    w.extend_from_slice(&[7u8; 8]);
    reqs.extend(w);
    reqs.extend(request(0, 4, 5, SIZE, 1)); // trim past the end
    reqs.extend(request(0, 6, 6, SIZE - 1, 2)); // zero past the end
    reqs.extend(request(CMD_FLAG_FAST_ZERO, 6, 7, 0, 512)); // fast zero, not offered
    reqs.extend(request(0, 7, 8, 0, 512)); // block status, no meta context
    reqs.extend(request(0, 42, 9, 0, 512)); // no such command
    let mut w = request(0x100, 1, 10, 0, 4); // unknown flag on a write: payload consumed
    w.extend_from_slice(b"abcd");
    reqs.extend(w);
    reqs.extend(request(0, 5, 11, 0, 4096)); // cache: a hint, fine
    reqs.extend(request(0, 0, 12, 0, 4)); // still in step: a good read
    reqs.extend(request(0, 2, 13, 0, 0));
    let (r, end, disk) = transmit(reqs, false, &[(12, 4)]);
    assert_eq!(end, Some(End::Disconnected));
    let got: Vec<(u64, u32)> = r.iter().map(|x| (x.0, x.1)).collect();
    assert_eq!(
        got,
        [
            (1, e(Errno::Inval)),
            (2, e(Errno::Inval)),
            (3, e(Errno::Inval)),
            (4, e(Errno::NoSpc)),
            (5, e(Errno::Inval)),
            (6, e(Errno::NoSpc)),
            (7, e(Errno::Inval)),
            (8, e(Errno::Inval)),
            (9, e(Errno::Inval)),
            (10, e(Errno::Inval)),
            (11, 0),
            (12, 0),
        ]
    );
    assert!(disk.out_of_bounds.lock().unwrap().is_empty());
    assert_eq!(
        disk.bytes.lock().unwrap()[0..4],
        [0, 1, 2, 3],
        "nothing written"
    );

    // Read-only: writes, trims and zeroes are EPERM; reads and flushes work.
    let mut reqs = request(0, 1, 1, 0, 4);
    reqs.extend_from_slice(b"abcd");
    reqs.extend(request(0, 4, 2, 0, 4096));
    reqs.extend(request(0, 6, 3, 0, 4096));
    reqs.extend(request(0, 3, 4, 0, 0));
    let (r, _, disk) = transmit(reqs, true, &[]);
    let got: Vec<(u64, u32)> = r.iter().map(|x| (x.0, x.1)).collect();
    assert_eq!(got, [(1, 1), (2, 1), (3, 1), (4, 0)]);
    assert_eq!(disk.bytes.lock().unwrap()[0..4], [0, 1, 2, 3]);
}

#[test]
fn protocol_violations_close_the_connection() {
    let (_, end, _) = transmit(request(0, 1, 1, 0, MAX_PAYLOAD + 1), false, &[]);
    assert!(matches!(end, Some(End::ProtocolError(ref m)) if m.contains("maximum payload")));
    let mut bad = request(0, 0, 1, 0, 4);
    bad[0] ^= 0xff;
    let (r, end, _) = transmit(bad, false, &[]);
    assert!(r.is_empty());
    assert!(matches!(end, Some(End::ProtocolError(ref m)) if m.contains("magic")));
    // A write cut short by a disconnect is an I/O error, not a write.
    let mut cut = request(0, 1, 1, 0, 4096);
    cut.extend_from_slice(&[9u8; 100]);
    let (r, end, disk) = transmit(cut, false, &[]);
    assert!(r.is_empty() && end.is_none());
    assert_eq!(disk.bytes.lock().unwrap()[0], 0);
}

/// A valid session to mutate: writes, reads, flushes, trims and zeroes.
fn valid_session(ops: &[(u16, u64, u32)]) -> Vec<u8> {
    let mut v = client_flags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
    v.extend(go("pc-1", &[INFO_BLOCK_SIZE]));
    for (i, &(cmd, offset, len)) in ops.iter().enumerate() {
        v.extend(request(0, cmd, i as u64, offset, len));
        if cmd == 1 {
            v.extend(std::iter::repeat_n(0x5a, len as usize));
        }
    }
    v
}

fn assert_safe(input: Vec<u8>) -> Result<(), TestCaseError> {
    for read_only in [false, true] {
        let disk = MemDisk::new();
        let _ = session(input.clone(), read_only, &disk);
        let oob = disk.out_of_bounds.lock().unwrap();
        prop_assert!(oob.is_empty(), "device I/O outside the export: {:?}", *oob);
        if read_only {
            let bytes = disk.bytes.lock().unwrap();
            prop_assert!(bytes.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_crash_the_handshake_or_reach_the_device(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        prefix in 0usize..3,
    ) {
        // Random bytes from the start, after the client flags, or after a GO.
        let mut input = match prefix {
            0 => Vec::new(),
            1 => client_flags(CLIENT_FIXED_NEWSTYLE),
            _ => [client_flags(CLIENT_FIXED_NEWSTYLE), go("pc-1", &[])].concat(),
        };
        input.extend(bytes);
        assert_safe(input)?;
    }

    #[test]
    fn mutated_sessions_never_crash_or_write_outside_the_export(
        ops in proptest::collection::vec(
            (0u16..8, prop_oneof![0u64..SIZE, Just(SIZE - 1), Just(u64::MAX - 10), any::<u64>()],
             prop_oneof![0u32..9000, Just(MAX_PAYLOAD + 1), any::<u32>()]),
            1..12),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        // Keep writes small enough to build in memory; huge ones are tested by length only.
        let ops: Vec<(u16, u64, u32)> = ops.into_iter()
            .map(|(c, o, l)| if c == 1 { (c, o, l.min(MAX_PAYLOAD + 1).min(70_000)) } else { (c, o, l) })
            .collect();
        let mut input = valid_session(&ops);
        for (at, x) in flips {
            let i = at.index(input.len());
            input[i] ^= x;
        }
        let keep = cut.index(input.len() + 1);
        input.truncate(keep.max(input.len() / 2));
        assert_safe(input)?;
    }
}
