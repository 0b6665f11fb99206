//! iSCSI commands kept in flight together on an rbd clone (the session's pipeline): one
//! TCP write of 49 SIMPLE commands (rounds of 8 writes with their data at 8 places, then
//! 8 reads of them, a SYNCHRONIZE CACHE among them), then every answer read. Each command
//! is answered once with GOOD, StatSN goes on by one, and every read sees the last write
//! before it to its blocks, as if they had run one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use super::common::ceph::cluster;
use super::common::iscsi::{command, keys, login, rw10, Reply};
use super::common::room::{Golden, Iscsi, Pc, RoomBuilder};

/// The command as a SIMPLE task (ATTR 1): what an initiator's queued commands are.
fn simple(mut pdu: Vec<u8>) -> Vec<u8> {
    pdu[1] = (pdu[1] & !0x07) | 1;
    pdu
}

#[test]
fn commands_in_flight_together_answer_once_each_and_reads_see_the_writes_before_them() {
    let c = cluster();
    c.golden("pipe", "base", &vec![9; 8 << 20]);
    let room = RoomBuilder::userspace()
        .golden(Golden::Rbd("pipe@base".into()))
        .extra(&c.section("pipe"))
        .cow("8MiB", "4KiB")
        .iscsi(Iscsi::new("iqn.2024-01.lan.pipe").acl("open"))
        .pc(Pc::new("pc-1").export("iscsi"))
        .build();
    room.cowctl(&["apply"]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", room.iscsi_port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = cowctl::iscsi::reader::PduReader::new(stream.try_clone().unwrap(), 1 << 20);
    let text = keys(&[
        ("InitiatorName", "iqn.2024-01.lan.pipe:by-hand"),
        ("TargetName", "iqn.2024-01.lan.pipe:pc-1"),
        ("SessionType", "Normal"),
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("ImmediateData", "Yes"),
        ("MaxRecvDataSegmentLength", "65536"),
    ]);
    stream.write_all(&login(1, 3, true, 1, &text)).unwrap();
    let answer = reader.read_pdu().unwrap();
    assert_eq!(answer.bhs.0[36..38], [0, 0], "the login succeeds");

    // Three rounds: 8 writes of 8 blocks at 8 places (in flight together), then reads of
    // the 8 places (the first waits for the writes; then they are in flight together).
    let mut burst = Vec::new();
    let mut expect: BTreeMap<u32, Option<(u32, u8)>> = BTreeMap::new();
    let mut itt = 0u32;
    for round in 0..3u8 {
        for place in 0..8u8 {
            let byte = round * 16 + place + 1;
            itt += 1;
            let data = vec![byte; 4096];
            burst.extend(simple(command(
                itt,
                itt,
                &rw10(0x2a, u32::from(place) * 64, 8),
                4096,
                false,
                true,
                &data,
            )));
            expect.insert(itt, None);
        }
        for place in 0..8u8 {
            let byte = round * 16 + place + 1;
            itt += 1;
            burst.extend(simple(command(
                itt,
                itt,
                &rw10(0x28, u32::from(place) * 64, 8),
                4096,
                true,
                false,
                &[],
            )));
            expect.insert(itt, Some((u32::from(place) * 64, byte)));
        }
        if round == 1 {
            itt += 1;
            let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            burst.extend(simple(command(itt, itt, &sync, 0, false, false, &[])));
            expect.insert(itt, None);
        }
    }
    // Sent from a thread of its own: the answers are read meanwhile, so neither side's
    // buffers can fill up and block the other.
    let mut sender = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || sender.write_all(&burst).unwrap());

    let mut answered = BTreeSet::new();
    let mut stat_sn: Option<u32> = None;
    let mut data: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while answered.len() < expect.len() {
        let p = reader.read_pdu().unwrap();
        let reply = Reply {
            bhs: p.bhs,
            data: p.data.to_vec(),
        };
        data.entry(reply.itt())
            .or_default()
            .extend_from_slice(&reply.data);
        let has_status = p.bhs.opcode_byte() != 0x25 || p.bhs.0[1] & 0x01 != 0;
        if !has_status {
            continue;
        }
        assert_eq!(reply.status(), 0, "GOOD for itt {}", reply.itt());
        let sn = p.bhs.u32_at(24);
        if let Some(before) = stat_sn {
            assert_eq!(sn, before.wrapping_add(1), "StatSN goes on by one");
        }
        stat_sn = Some(sn);
        assert!(
            answered.insert(reply.itt()),
            "itt {} answered twice",
            reply.itt()
        );
    }
    sending.join().unwrap();
    for (itt, want) in &expect {
        if let Some((lba, byte)) = want {
            let got = &data[itt];
            assert!(
                got.len() == 4096 && got.iter().all(|b| b == byte),
                "the read {itt} of block {lba} sees the write before it ({byte}), not {:?}",
                got.first()
            );
        }
    }
}
