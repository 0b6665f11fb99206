//! The iSCSI target's protocol in memory: login and its refusals, the full feature phase
//! (R2T, Data-Out checks, residuals, the CmdSN window, task management, NOP both ways,
//! SendTargets), and fuzzing of the PDU parser, the login state machine and the session
//! with random and mutated streams — no panic, no disk I/O outside the LUN.

#![allow(clippy::cast_possible_truncation)] // tests build small byte streams

mod common;

use std::io::Cursor;
use std::time::Duration;

use common::iscsi::*;
use cowctl::iscsi::connection::{converse, AdmitAll, Ended, Line};
use cowctl::iscsi::login::{End, Login};
use cowctl::iscsi::pdu::LoginRequest;
use cowctl::iscsi::reader::{PduReader, PduWriter};
use cowctl::iscsi::session::{Discovery, Kind, Session, WINDOW};
use cowctl::iscsi::Portal;
use proptest::prelude::*;

const READ_10: u8 = 0x28;
const WRITE_10: u8 = 0x2a;

/// An open connection of the in-memory initiator, after a successful login.
struct Conn {
    session: Session<'static, Vec<u8>>,
    pc: &'static OnePc,
    cmd_sn: u32,
}

impl Conn {
    fn new(pc: OnePc) -> Conn {
        let pc: &'static OnePc = Box::leak(Box::new(pc));
        let mut login = Login::new(7, WINDOW);
        let bytes = leading_login(1);
        let mut r = PduReader::new(&bytes[..], 65536);
        let p = r.read_pdu().unwrap();
        let reply = login.handle(&LoginRequest::parse(&p.bhs), p.data, pc);
        let Some(End::FullFeature(est)) = reply.end else {
            panic!("login failed: {:?}", reply.end)
        };
        let a = pc
            .attach(&est, "127.0.0.1:1".parse().unwrap(), Box::new(|| {}))
            .unwrap();
        let discovery = Discovery {
            directory: pc,
            portals: pc.portals(),
            local: Some("10.0.0.1:3260".parse().unwrap()),
        };
        let kind = Kind::Normal {
            lu: a.lu,
            nexus: a.nexus,
        };
        Conn {
            session: Session::new(PduWriter::new(Vec::new()), *est, kind, discovery),
            pc,
            cmd_sn: 1,
        }
    }

    fn open() -> Conn {
        Conn::new(OnePc::open())
    }

    /// Sends PDUs, returns what the target answered.
    fn send(&mut self, bytes: &[u8]) -> Vec<Reply> {
        let mut r = PduReader::new(bytes, 1 << 20);
        r.set_limits(256 << 10, Default::default());
        loop {
            match r.read_pdu() {
                Ok(p) => {
                    self.session.handle(&p).unwrap();
                }
                Err(cowctl::iscsi::reader::ReadError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        self.session.flush().unwrap();
        replies(&std::mem::take(self.session.writer()))
    }

    fn next_sn(&mut self) -> u32 {
        let sn = self.cmd_sn;
        self.cmd_sn += 1;
        sn
    }

    fn command(
        &mut self,
        itt: u32,
        cdb: &[u8],
        expected: u32,
        read: bool,
        write: bool,
        data: &[u8],
    ) -> Vec<Reply> {
        let sn = self.next_sn();
        self.send(&command(itt, sn, cdb, expected, read, write, data))
    }

    fn tur(&mut self, itt: u32) -> Vec<Reply> {
        self.command(itt, &[0; 6], 0, false, false, &[])
    }
}

fn rw16(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![op, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn inquiry_and_a_read_come_back_in_one_data_in_with_status() {
    let mut c = Conn::open();
    let r = c.command(1, &[0x12, 0, 0, 0, 96, 0], 96, true, false, &[]);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].opcode(), 0x25);
    assert_eq!(
        r[0].bhs.0[1] & 0x81,
        0x81,
        "F and S: status collapsed into the Data-In"
    );
    assert_eq!(&r[0].data[8..14], b"COWCTL");
    let r = c.command(2, &rw10(READ_10, 2, 1), 512, true, false, &[]);
    let want: Vec<u8> = (1024..1536u64).map(|i| (i % 251) as u8).collect();
    assert_eq!(r[0].data, want);
    assert_eq!(r[0].status(), 0);
}

#[test]
fn a_write_takes_immediate_data_then_asks_for_the_rest_burst_by_burst() {
    let mut c = Conn::open();
    let payload: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 256) as u8).collect();
    // 8 KiB of immediate data (the negotiated first burst), the rest by R2T.
    let mut r = c.command(
        9,
        &rw10(WRITE_10, 16, 128),
        65536,
        false,
        true,
        &payload[..8192],
    );
    let mut r2ts = 0;
    loop {
        assert_eq!(r.len(), 1, "{r:?}");
        let p = &r[0];
        if p.opcode() == 0x21 {
            assert_eq!(p.status(), 0, "the write ends GOOD");
            break;
        }
        assert_eq!(p.opcode(), 0x31, "an R2T");
        let (ttt, offset, len) = (p.bhs.u32_at(20), p.bhs.u32_at(40), p.bhs.u32_at(44));
        assert_eq!(p.bhs.u32_at(36), r2ts, "R2TSN counts up");
        assert_eq!(
            offset,
            8192 + r2ts * 16384,
            "asked in order, after the immediate data"
        );
        assert!(len <= 16384, "no more than MaxBurstLength at once");
        // Answer in two Data-Out PDUs, the second with F.
        let half = len / 2;
        let mut bytes = data_out(
            9,
            ttt,
            0,
            offset,
            false,
            &payload[offset as usize..(offset + half) as usize],
        );
        bytes.extend(data_out(
            9,
            ttt,
            1,
            offset + half,
            true,
            &payload[(offset + half) as usize..(offset + len) as usize],
        ));
        r = c.send(&bytes);
        r2ts += 1;
    }
    assert_eq!(r2ts, 4, "56 KiB in bursts of 16 KiB");
    assert_eq!(
        &c.pc.disk.bytes.lock().unwrap()[16 * 512..16 * 512 + 65536],
        &payload[..]
    );
}

#[test]
fn a_data_out_out_of_sequence_fails_its_command_and_the_session_goes_on() {
    let mut c = Conn::open();
    let r = c.command(3, &rw10(WRITE_10, 0, 2), 1024, false, true, &[]);
    let ttt = r[0].bhs.u32_at(20);
    // DataSN 1 where 0 is due.
    let r = c.send(&data_out(3, ttt, 1, 0, true, &[0xaa; 1024]));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status(), 2);
    assert_eq!(
        r[0].sense(),
        (0x0b, 0x4b, 0x00),
        "ABORTED COMMAND, DATA PHASE ERROR"
    );
    // Its later data is dropped without a word; the next command works.
    assert!(c
        .send(&data_out(3, ttt, 0, 0, true, &[0xaa; 1024]))
        .is_empty());
    assert_eq!(c.tur(4)[0].status(), 0);
    assert_ne!(
        c.pc.disk.bytes.lock().unwrap()[0],
        0xaa,
        "nothing was written"
    );
    // A wrong offset and an F bit in the wrong place fail the same way.
    let r = c.command(5, &rw10(WRITE_10, 0, 2), 1024, false, true, &[]);
    let ttt = r[0].bhs.u32_at(20);
    assert_eq!(
        c.send(&data_out(5, ttt, 0, 512, true, &[1; 512]))[0].status(),
        2
    );
    let r = c.command(6, &rw10(WRITE_10, 0, 2), 1024, false, true, &[]);
    let ttt = r[0].bhs.u32_at(20);
    assert_eq!(
        c.send(&data_out(6, ttt, 0, 0, true, &[1; 512]))[0].status(),
        2
    );
}

#[test]
fn residuals_say_what_did_not_move() {
    let mut c = Conn::open();
    // One block asked for, 200 bytes expected: 200 bytes, overflow of 312.
    let r = c.command(1, &rw10(READ_10, 0, 1), 200, true, false, &[]);
    assert_eq!(r[0].data.len(), 200);
    assert_eq!(r[0].residual(), (true, false, 312));
    // 10000 expected: one block, underflow.
    let r = c.command(2, &rw10(READ_10, 0, 1), 10000, true, false, &[]);
    assert_eq!(r[0].data.len(), 512);
    assert_eq!(r[0].residual(), (false, true, 10000 - 512));
    // A write of two blocks with one block's worth expected writes one block only.
    let before = c.pc.disk.bytes.lock().unwrap()[512..1024].to_vec();
    let r = c.command(3, &rw10(WRITE_10, 0, 2), 512, false, true, &[0x55; 512]);
    assert_eq!(r[0].status(), 0);
    assert_eq!(r[0].residual(), (true, false, 512));
    assert_eq!(&c.pc.disk.bytes.lock().unwrap()[512..1024], &before[..]);
}

#[test]
fn commands_outside_the_cmdsn_window_are_dropped_silently() {
    let mut c = Conn::open();
    let next = c.cmd_sn;
    assert!(
        c.send(&command(
            1,
            next + WINDOW + 5,
            &[0; 6],
            0,
            false,
            false,
            &[]
        ))
        .is_empty(),
        "too high"
    );
    assert!(
        c.send(&command(2, next - 1, &[0; 6], 0, false, false, &[]))
            .is_empty(),
        "too low"
    );
    let r = c.tur(3);
    assert_eq!(r[0].status(), 0);
    assert_eq!(
        r[0].bhs.u32_at(28),
        next + 1,
        "ExpCmdSN moved by one command only"
    );
}

#[test]
fn abort_task_takes_a_pending_write_away_without_an_answer() {
    let mut c = Conn::open();
    let sn = c.cmd_sn;
    let r = c.command(7, &rw10(WRITE_10, 0, 8), 4096, false, true, &[]);
    let ttt = r[0].bhs.u32_at(20);
    let r = c.send(&tmf(8, 1, 7, c.cmd_sn, sn));
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].opcode(), r[0].bhs.0[2]),
        (0x22, 0),
        "function complete"
    );
    assert!(
        c.send(&data_out(7, ttt, 0, 0, true, &[1; 4096])).is_empty(),
        "its data is dropped"
    );
    // A finished task: "task does not exist".
    let sn = c.cmd_sn;
    c.tur(9);
    let r = c.send(&tmf(10, 1, 9, c.cmd_sn, sn));
    assert_eq!(r[0].bhs.0[2], 1);
    // LUN reset and target warm reset are done.
    assert_eq!(c.send(&tmf(11, 5, 0, c.cmd_sn, 0))[0].bhs.0[2], 0);
    assert_eq!(c.send(&tmf(12, 6, 0, c.cmd_sn, 0))[0].bhs.0[2], 0);
}

#[test]
fn ranges_past_the_end_never_reach_the_disk() {
    let mut c = Conn::open();
    let blocks = DISK_SIZE / 512;
    let lba_oob = (0x05, 0x21, 0x00);
    for (cdb, out) in [
        (rw16(0x88, u64::MAX, 1), 0),
        (rw16(0x88, blocks, 1), 0),
        (rw16(0x88, blocks - 1, 2), 0),
        (rw16(0x88, 1 << 55, 1 << 10), 0), // LBA × 512 wraps to 0
        (rw16(0x8a, u64::MAX - 1, 4), 2048),
        (rw16(0x8f, blocks + 1, 0), 0), // VERIFY(16), zero blocks past the end
        (rw16(0x93, blocks - 1, 2), 512), // WRITE SAME(16)
        (rw16(0x91, u64::MAX, 1), 0),   // SYNCHRONIZE CACHE(16)
    ] {
        let write = out > 0;
        let r = c.command(1, &cdb, out, !write, write, &vec![0; out as usize]);
        assert_eq!(r.len(), 1, "{cdb:02x?}: {r:?}");
        assert_eq!(r[0].sense(), lba_oob, "{cdb:02x?}");
    }
    // UNMAP with a descriptor past the end.
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&(blocks - 1).to_be_bytes());
    list.extend_from_slice(&2u32.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    let r = c.command(
        2,
        &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        24,
        false,
        true,
        &list,
    );
    assert_eq!(r[0].sense(), lba_oob);
    // A 2 TiB write is refused before any data moves: no R2T, no buffer.
    let r = c.command(3, &rw16(0x8a, 0, u32::MAX), u32::MAX, false, true, &[]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].sense(), lba_oob);
    assert!(c.pc.disk.out_of_bounds.lock().unwrap().is_empty());
}

#[test]
fn an_expected_length_larger_than_the_command_asks_for_no_more_than_the_command() {
    let mut c = Conn::open();
    // One block written, 4 GiB "expected": the R2T asks for the block only.
    let r = c.command(1, &rw10(WRITE_10, 0, 1), u32::MAX, false, true, &[]);
    assert_eq!(r[0].opcode(), 0x31);
    assert_eq!(r[0].bhs.u32_at(44), 512);
    let r = c.send(&data_out(1, r[0].bhs.u32_at(20), 0, 0, true, &[9; 512]));
    assert_eq!(r[0].residual(), (false, true, u32::MAX - 512));
}

#[test]
fn nop_out_is_echoed_and_an_idle_initiator_is_pinged_then_dropped() {
    let mut c = Conn::open();
    let sn = c.next_sn();
    let r = c.send(&nop_out(5, 0xffff_ffff, sn, false, b"ping-data"));
    assert_eq!(r[0].opcode(), 0x20);
    assert_eq!((r[0].itt(), r[0].bhs.u32_at(20)), (5, 0xffff_ffff));
    assert_eq!(r[0].data, b"ping-data");
    assert!(c
        .send(&nop_out(0xffff_ffff, 0xffff_ffff, c.cmd_sn, true, &[]))
        .is_empty());
    c.session.set_ping_after(Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(
        c.session.idle().unwrap(),
        cowctl::iscsi::session::Next::Continue
    );
    let pings = replies(&std::mem::take(c.session.writer()));
    assert_eq!(pings.len(), 1);
    let ttt = pings[0].bhs.u32_at(20);
    assert_eq!((pings[0].opcode(), pings[0].itt()), (0x20, 0xffff_ffff));
    assert_ne!(ttt, 0xffff_ffff, "a ping the initiator must answer");
    // Answered: fine. Then unanswered: dropped.
    c.send(&nop_out(0xffff_ffff, ttt, c.cmd_sn, true, &[]));
    std::thread::sleep(Duration::from_millis(30));
    c.session.idle().unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert!(matches!(
        c.session.idle().unwrap(),
        cowctl::iscsi::session::Next::Close(_)
    ));
}

#[test]
fn send_targets_lists_what_the_initiator_may_log_into() {
    let mut c = Conn::open();
    let sn = c.next_sn();
    let r = c.send(&text(1, sn, b"SendTargets=All\0"));
    assert_eq!(r[0].opcode(), 0x24);
    assert_eq!(r[0].bhs.0[1], 0x80, "one final response");
    assert_eq!(
        String::from_utf8_lossy(&r[0].data),
        format!("TargetName={TARGET}\0TargetAddress=10.0.0.1:3260,1\0"),
        "a portal on every address is reported at the address the initiator reached"
    );
    let sn = c.next_sn();
    let r = c.send(&text(2, sn, b"SendTargetsPlease=All\0"));
    assert_eq!(
        r[0].opcode(),
        0x3f,
        "anything else is rejected, the connection kept"
    );
    assert_eq!(c.tur(3)[0].status(), 0);
}

/// A line that never times out and closes nothing.
struct Memory;

impl Line for Memory {
    fn set_read_timeout(&self, _: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }
    fn set_deadline(&self, _: Option<std::time::Instant>) {}
    fn closer(&self) -> std::io::Result<Box<dyn Fn() + Send>> {
        Ok(Box::new(|| {}))
    }
}

/// Runs a whole connection over `input`; returns how it ended and what the target sent.
fn run(pc: &OnePc, input: &[u8]) -> (Ended, Vec<Reply>) {
    let mut out = Vec::new();
    let ended = converse(
        PduReader::new(Cursor::new(input), 64 << 10),
        PduWriter::new(&mut out),
        &Memory,
        "127.0.0.1:1".parse().unwrap(),
        None,
        pc,
        &mut AdmitAll,
    )
    .unwrap();
    (ended, replies(&out))
}

#[test]
fn a_data_segment_over_the_limit_ends_the_connection() {
    let pc = OnePc::open();
    let mut input = leading_login(1);
    input.extend(command(
        1,
        1,
        &rw10(WRITE_10, 0, 1024),
        1 << 19,
        false,
        true,
        &vec![0; 300 << 10],
    ));
    let (ended, _) = run(&pc, &input);
    let Ended::Closed(why) = ended else {
        panic!("{ended:?}")
    };
    assert!(why.contains("over the 262144-byte limit"), "{why}");
}

#[test]
fn logins_that_may_not_proceed_are_refused_with_their_status() {
    let mut pc = OnePc::open();
    pc.allowed = Some(INITIATOR.into());
    let stranger = login(
        1,
        3,
        true,
        1,
        &keys(&[
            ("InitiatorName", "iqn.2024-01.lan.evil:x"),
            ("TargetName", TARGET),
        ]),
    );
    let (ended, r) = run(&pc, &stranger);
    assert!(
        matches!(ended, Ended::Refused(s, _) if (s.class, s.detail) == (2, 2)),
        "{ended:?}"
    );
    assert_eq!((r[0].bhs.0[36], r[0].bhs.0[37]), (2, 2));
    let unknown = login(
        1,
        3,
        true,
        1,
        &keys(&[("InitiatorName", INITIATOR), ("TargetName", "iqn.x:nope")]),
    );
    assert!(matches!(run(&pc, &unknown).0, Ended::Refused(s, _) if (s.class, s.detail) == (2, 3)));
    let first = cowctl::iscsi::pdu::Bhs::default();
    let (ended, r) = run(&pc, &pdu(&first, &[]));
    assert!(
        matches!(ended, Ended::Closed(_)) && r.is_empty(),
        "a NOP before login: {ended:?}"
    );
    // A logout after a good login ends the connection politely.
    let mut input = leading_login(1);
    input.extend(logout(2, 1));
    let (ended, r) = run(&pc, &input);
    assert!(
        matches!(ended, Ended::Closed(ref w) if w.contains("logged out")),
        "{ended:?}"
    );
    assert_eq!(r.last().unwrap().opcode(), 0x26);
}

/// Arbitrary PDUs an initiator could send in the full feature phase.
fn any_pdu() -> impl Strategy<Value = Vec<u8>> {
    let cdb_op = prop_oneof![
        Just(0x00u8),
        Just(0x03),
        Just(0x08),
        Just(0x0a),
        Just(0x12),
        Just(0x16),
        Just(0x17),
        Just(0x1a),
        Just(0x25),
        Just(0x28),
        Just(0x2a),
        Just(0x2e),
        Just(0x2f),
        Just(0x35),
        Just(0x41),
        Just(0x42),
        Just(0x5a),
        Just(0x88),
        Just(0x8a),
        Just(0x8f),
        Just(0x91),
        Just(0x93),
        Just(0x9e),
        Just(0xa0),
        any::<u8>()
    ];
    let command = (
        cdb_op,
        proptest::collection::vec(any::<u8>(), 15),
        any::<u32>(),
        0u32..4,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..1200),
    )
        .prop_map(|(op, rest, itt, sn, r, w, data)| {
            let mut cdb = vec![op];
            cdb.extend(rest);
            command(itt % 8, sn, &cdb, (data.len() as u32) * 3, r, w, &data)
        });
    let data = (
        0u32..8,
        0u32..8,
        0u32..4,
        0u32..4096,
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(itt, ttt, sn, off, f, d)| data_out(itt, ttt, sn, off, f, &d));
    let other = (
        any::<[u8; 48]>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(mut h, d)| {
            // Any opcode and flags, but a data length that matches what follows.
            h[4] = 0;
            let mut b = cowctl::iscsi::pdu::Bhs(h);
            b.set_data_len(d.len());
            pdu(&b, &d)
        });
    prop_oneof![
        4 => command,
        3 => data,
        1 => (0u32..8, 0u8..10, 0u32..8).prop_map(|(itt, f, r)| tmf(itt, f, r, 1, 0)),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(itt, ttt)| nop_out(itt, ttt, 1, false, b"x")),
        1 => proptest::collection::vec(any::<u8>(), 0..100).prop_map(|d| text(1, 1, &d)),
        2 => other,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn random_sessions_never_crash_or_reach_outside_the_disk(pdus in proptest::collection::vec(any_pdu(), 1..12)) {
        let pc = OnePc::open();
        let mut input = leading_login(1);
        for p in &pdus {
            input.extend_from_slice(p);
        }
        let (_, r) = run(&pc, &input);
        prop_assert!(!r.is_empty(), "the login was answered");
        prop_assert!(pc.disk.out_of_bounds.lock().unwrap().is_empty());
    }

    #[test]
    fn mutated_streams_never_crash_the_parser_or_the_login(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let pc = OnePc::open();
        let mut input = leading_login(1);
        input.extend(command(1, 1, &rw10(WRITE_10, 0, 2), 1024, false, true, &[1; 512]));
        input.extend(data_out(1, 1, 0, 512, true, &[2; 512]));
        input.extend(command(2, 2, &rw10(READ_10, 0, 2), 1024, true, false, &[]));
        for (at, x) in flips {
            let i = at % input.len();
            input[i] ^= x;
        }
        input.truncate(cut % (input.len() + 1));
        input.extend(extra);
        let _ = run(&pc, &input);
        prop_assert!(pc.disk.out_of_bounds.lock().unwrap().is_empty());
    }

    #[test]
    fn random_login_text_gets_a_login_response_or_a_refusal(
        text in proptest::collection::vec(any::<u8>(), 0..600),
        flags in any::<u8>(),
    ) {
        let pc = OnePc::open();
        let mut first = login(0, 1, true, 1, &text);
        first[1] = flags;
        let (_, r) = run(&pc, &first);
        for p in r {
            prop_assert_eq!(p.opcode(), 0x23);
        }
    }
}
