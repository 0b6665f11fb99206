//! `cowctl serve`'s AoE target on a real interface: a veth pair this test makes, the target
//! on one end and raw AoE frames from the other, as an initiator's NIC sends them.
//! Discovery by broadcast answers for the PCs this MAC may see only, frames are sized to
//! the jumbo MTU, writes survive a killed service, a reset brings back the golden disk
//! while exported, and a stranger's MAC gets silence.

#![allow(clippy::cast_possible_truncation)] // bytes of small test patterns

mod common;

use std::time::{Duration, Instant};

use common::aoe::{ata, config};
use common::net::Link;
use common::room::{Golden, Room};
use cowctl::aoe::socket::{Socket, MAX_FRAME};
use cowctl::aoe::wire::{ATA_LEN, HEADER_LEN};

const PC_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x11];
const STRANGER: &str = "02:42:00:00:00:99";
const GOLDEN_BYTE: u8 = 0x47;

/// The initiator's end of the link.
struct Initiator {
    socket: Socket,
    mac: [u8; 6],
    target: [u8; 6],
}

impl Initiator {
    fn new(link: &Link) -> Initiator {
        let socket = Socket::open(link.peer()).unwrap();
        socket.set_read_timeout(Duration::from_millis(200)).unwrap();
        let mac = socket.mac().unwrap();
        let target =
            std::fs::read_to_string(format!("/sys/class/net/{}/address", link.name)).unwrap();
        let target = target.trim().parse::<cowctl::manifest::Mac>().unwrap().0;
        Initiator {
            socket,
            mac,
            target,
        }
    }

    /// Sends `frame` (built for PC_MAC) from this NIC's MAC, to everyone for a Query Config
    /// (discovery) and to the target's MAC otherwise, and collects the answers that arrive
    /// within `wait`.
    fn ask(&self, frame: &[u8], wait: Duration) -> Vec<Vec<u8>> {
        let mut f = frame.to_vec();
        let dst = if f[19] == 1 { [0xff; 6] } else { self.target };
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&self.mac);
        self.socket.send(&f).unwrap();
        let mut answers = Vec::new();
        let mut buf = vec![0u8; MAX_FRAME];
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if let Ok(Some(n)) = self.socket.recv(&mut buf) {
                let a = &buf[..n];
                // Our own request is not an answer; nor is a stale announcement.
                if a[14] & 0x08 != 0 && a[20..24] == f[20..24] && a[19] == f[19] {
                    answers.push(a.to_vec());
                }
            }
        }
        answers
    }

    /// The single answer to an ATA command: its status register and data.
    fn ata(&self, frame: &[u8]) -> (u8, Vec<u8>) {
        for _ in 0..5 {
            let mut answers = self.ask(frame, Duration::from_millis(400));
            if let Some(a) = answers.pop() {
                assert_eq!(a[14] & 0x04, 0, "an AoE error {}", a[15]);
                return (a[HEADER_LEN + 3], a[HEADER_LEN + ATA_LEN..].to_vec());
            }
        }
        panic!("no answer to the ATA command");
    }
}

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
