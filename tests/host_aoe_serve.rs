//! `cowctl serve`'s AoE target on a real interface: a veth pair this test makes, the target
//! on one end and raw AoE frames from the other, as an initiator's NIC sends them.
//! Discovery by broadcast answers for the PCs this MAC may see only, frames are sized to
//! the jumbo MTU, writes survive a killed service, a reset brings back the golden disk
//! while exported, and a stranger's MAC gets silence.

#![allow(clippy::cast_possible_truncation)] // bytes of small test patterns

mod common;

use std::time::Duration;

use common::aoe::{ata, config};
use common::aoenic::Initiator;
use common::net::Link;
use common::room::{Golden, Room};
use cowctl::aoe::wire::HEADER_LEN;

const PC_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x11];
const STRANGER: &str = "02:42:00:00:00:99";
const GOLDEN_BYTE: u8 = 0x47;

/// The two-PC AoE room on the target's end of `link`, applied.
fn room(link: &Link) -> Room {
    let mac = cowctl::manifest::Mac(PC_MAC).to_string();
    let room = common::room::two_aoe_pcs(&link.name, &mac)
        .golden(Golden::Fill(GOLDEN_BYTE, 16 << 20))
        .cow("8MiB", "4KiB")
        .build();
    room.cowctl(&["apply"]);
    room
}

fn sectors(identify: &[u8]) -> u64 {
    u64::from_le_bytes(identify[200..208].try_into().unwrap())
}

#[test]
fn an_initiator_finds_reads_and_writes_its_pc_and_a_reset_brings_back_the_golden_disk() {
    let link = Link::veth(1, 9000);
    link.set_peer_mac(&cowctl::manifest::Mac(PC_MAC).to_string());
    let room = room(&link);
    let me = Initiator::new(&link);

    // Discovery: only pc-01 (e7.3) answers this MAC, with 17 sectors per jumbo frame.
    let answers = me.ask(
        &config([0; 6], 0xffff, 0xff, 0, b""),
        Duration::from_secs(1),
    );
    assert_eq!(answers.len(), 1, "exactly one target answers this MAC");
    let a = &answers[0];
    assert_eq!((u16::from_be_bytes([a[16], a[17]]), a[18]), (7, 3));
    assert_eq!(a[HEADER_LEN + 4], 17, "sectors per 9000-byte frame");

    let (status, id) = me.ata(&ata(0xec, 0, 1, &[]));
    assert_eq!(status, 0x40);
    assert_eq!(sectors(&id), (16 << 20) / 512, "the export's size");

    let (_, before) = me.ata(&ata(0x24, 2048, 17, &[]));
    assert!(before[..17 * 512].iter().all(|b| *b == GOLDEN_BYTE));
    let data: Vec<u8> = (0..17 * 512).map(|i| (i % 253) as u8).collect();
    assert_eq!(me.ata(&ata(0x34, 2048, 17, &data)).0, 0x40);
    assert_eq!(
        &me.ata(&ata(0x24, 2048, 17, &[])).1[..data.len()],
        &data[..]
    );
    let status = room.cowctl(&["status", "pc-01"]);
    assert!(status.contains("e7.3"), "{status}");
    assert!(status.contains("AoE 02:42:00:00:00:11"), "{status}");

    // AoE has no flush: a completed write survives the service being killed.
    room.kill_service();
    room.cowctl(&["apply"]);
    assert_eq!(
        &me.ata(&ata(0x24, 2048, 17, &[])).1[..data.len()],
        &data[..]
    );

    room.cowctl(&["reset", "pc-01"]);
    let (_, after) = me.ata(&ata(0x24, 2048, 17, &[]));
    assert!(
        after[..17 * 512].iter().all(|b| *b == GOLDEN_BYTE),
        "after the reset the PC reads the golden image"
    );
}

#[test]
fn a_stranger_mac_gets_silence() {
    let link = Link::veth(2, 1500);
    link.set_peer_mac(STRANGER);
    let _room = room(&link);
    let me = Initiator::new(&link);
    let answers = me.ask(
        &config([0; 6], 0xffff, 0xff, 0, b""),
        Duration::from_secs(1),
    );
    assert!(answers.is_empty(), "discovery answered a stranger");
    assert!(
        me.ask(&ata(0x20, 0, 1, &[]), Duration::from_secs(1))
            .is_empty(),
        "a read by a stranger was answered"
    );
    // The same NIC with the PC's MAC is answered: the silence is the allow list's.
    link.set_peer_mac(&cowctl::manifest::Mac(PC_MAC).to_string());
    let me = Initiator::new(&link);
    assert_eq!(me.ata(&ata(0xec, 0, 1, &[])).0, 0x40);
}
