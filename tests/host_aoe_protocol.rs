//! The AoE target's answers to request frames, in memory: ATA through a memory disk that
//! records any I/O outside it, Query Config, Mac Mask List, Reserve/Release, and the
//! errors and silences the protocol defines for bad requests.

#![allow(clippy::cast_possible_truncation)] // bytes of small test patterns

mod common;

use common::aoe::{
    self, ata, config, frame, mask, port, resrel, unit, PC_MAC, SHELF, SLOT, STRANGER, TARGET_MAC,
};
use common::disk::{DiskRef, MemDisk, DISK_SIZE};
use cowctl::aoe::frame::FrameBuf;
use cowctl::aoe::wire::{Header, ATA_LEN, HEADER_LEN};
use cowctl::aoe::Unit;
use std::sync::Arc;

fn ask(u: &Unit, disk: &Arc<MemDisk>, f: &[u8], mtu: usize) -> Option<Vec<u8>> {
    let h = Header::parse(f).expect("an AoE frame");
    assert!(u.addressed(&h), "the test frame is addressed to the unit");
    u.answer(&h, f, &DiskRef(disk.clone()), &port(mtu))
}

/// Flags, error, and the body after the AoE header.
fn parts(r: &[u8]) -> (u8, u8, &[u8]) {
    assert!(
        r.len() >= 60,
        "answers are at least a minimal Ethernet frame"
    );
    assert_eq!(&r[0..6], &PC_MAC, "answered to the asker");
    assert_eq!(&r[6..12], &TARGET_MAC);
    assert_eq!(u16::from_be_bytes([r[16], r[17]]), SHELF);
    assert_eq!(r[18], SLOT);
    assert_eq!(&r[20..24], &[1, 2, 3, 4], "the tag is echoed");
    (r[14] & 0x0f, r[15], &r[HEADER_LEN..])
}

/// The flags and error of an answer.
fn flags_error(r: &[u8]) -> (u8, u8) {
    let (flags, error, _) = parts(r);
    (flags, error)
}

const RESPONSE: u8 = 0x08;
const ERROR: u8 = 0x04;

#[test]
fn identify_tells_the_size_and_a_stable_serial() {
    let (u, disk) = (unit(), MemDisk::new());
    let r = ask(&u, &disk, &ata(0xec, 0, 1, &[]), 1500).unwrap();
    let (flags, _, body) = parts(&r);
    assert_eq!(flags, RESPONSE);
    assert_eq!(body[3], 0x40, "status DRDY");
    let id = &body[ATA_LEN..ATA_LEN + 512];
    let sectors = u64::from_le_bytes(id[200..208].try_into().unwrap());
    assert_eq!(sectors, DISK_SIZE / 512);
    let serial = &id[20..40];
    let again = ask(&unit(), &disk, &ata(0xec, 0, 1, &[]), 1500).unwrap();
    assert_eq!(
        &again[HEADER_LEN + ATA_LEN + 20..HEADER_LEN + ATA_LEN + 40],
        serial
    );
}

#[test]
fn writes_land_where_they_say_in_lba28_and_lba48() {
    let (u, disk) = (unit(), MemDisk::new());
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let r = ask(&u, &disk, &ata(0x34, 100, 2, &data), 1500).unwrap();
    assert_eq!(parts(&r).0, RESPONSE);
    assert_eq!(&disk.bytes.lock().unwrap()[100 * 512..102 * 512], &data[..]);
    let r = ask(&u, &disk, &ata(0x20, 100, 2, &[]), 1500).unwrap();
    let (_, _, body) = parts(&r);
    assert_eq!(&body[ATA_LEN..ATA_LEN + 1024], &data[..]);
    // A jumbo frame carries 17 sectors; a 1500-byte one 2.
    let r = ask(&u, &disk, &ata(0x24, 0, 17, &[]), 9000).unwrap();
    assert_eq!(parts(&r).0, RESPONSE);
    assert_eq!(r.len(), HEADER_LEN + ATA_LEN + 17 * 512);
    let r = ask(&u, &disk, &ata(0x24, 0, 3, &[]), 1500).unwrap();
    assert_eq!(flags_error(&r), (RESPONSE | ERROR, 2), "Bad Argument");
}

#[test]
fn addresses_past_the_disk_get_an_ata_error_and_no_io() {
    let (u, disk) = (unit(), MemDisk::new());
    let last = DISK_SIZE / 512 - 1;
    for (cmd, lba, n) in [
        (0x24, last, 2),
        (0x34, last + 1, 1),
        (0x24, (1 << 48) - 1, 2),
        (0x20, 0x0fff_ffff, 1),
    ] {
        let data = vec![0u8; usize::from(n) * 512];
        let r = ask(
            &u,
            &disk,
            &ata(cmd, lba, n, if cmd == 0x34 { &data } else { &[] }),
            1500,
        )
        .unwrap();
        let (flags, _, body) = parts(&r);
        assert_eq!(flags, RESPONSE, "an ATA error, not an AoE one");
        assert_eq!(
            (body[3], body[1]),
            (0x41, 0x10),
            "ERR with IDNF for {cmd:#x} at {lba}"
        );
    }
    assert!(disk.out_of_bounds.lock().unwrap().is_empty());
}

#[test]
fn an_answer_buffer_used_again_carries_nothing_of_an_earlier_answer() {
    let (u, disk) = (unit(), MemDisk::new());
    disk.bytes.lock().unwrap().fill(0xa5);
    let last = DISK_SIZE / 512 - 1;
    let frames = [
        ata(0x24, 0, 17, &[]),   // a jumbo read fills the buffer with disk bytes
        ata(0xe5, 0, 0, &[]),    // CHECK POWER MODE: a short answer, padded
        ata(0x24, last, 2, &[]), // past the end: the ATA error, no data
        ata(0x24, 0, 18, &[]),   // more than a frame carries: Bad Argument
        config(PC_MAC, SHELF, SLOT, 0, b""),
    ];
    let mut kept = FrameBuf::default();
    for f in &frames {
        let h = Header::parse(f).unwrap();
        let fresh = u
            .answer(&h, f, &DiskRef(disk.clone()), &port(9000))
            .unwrap();
        assert!(u.answer_into(&h, f, &DiskRef(disk.clone()), &port(9000), &mut kept));
        assert_eq!(
            &kept[..],
            &fresh[..],
            "the same answer as from a new buffer"
        );
    }
    assert_eq!(kept.len(), 60, "the last answer is short");
}

#[test]
fn a_write_shorter_than_its_count_is_refused_and_not_done() {
    let (u, disk) = (unit(), MemDisk::new());
    let before = disk.bytes.lock().unwrap().clone();
    let r = ask(&u, &disk, &ata(0x30, 4, 2, &[9u8; 700]), 1500).unwrap();
    assert_eq!(flags_error(&r), (RESPONSE | ERROR, 2));
    assert_eq!(*disk.bytes.lock().unwrap(), before);
    // Truncated headers get silence.
    let f = ata(0x20, 0, 1, &[]);
    assert!(ask(&u, &disk, &f[..HEADER_LEN + 6], 1500).is_none());
}

#[test]
fn unknown_commands_and_versions_get_their_errors() {
    let (u, disk) = (unit(), MemDisk::new());
    let r = ask(&u, &disk, &ata(0x92, 0, 0, &[]), 1500).unwrap();
    let (flags, _, body) = parts(&r);
    assert_eq!(
        (flags, body[3], body[1]),
        (RESPONSE, 0x41, 0x04),
        "ATA ABRT"
    );
    let r = ask(&u, &disk, &frame(PC_MAC, SHELF, SLOT, 9, &[0; 12]), 1500).unwrap();
    assert_eq!(
        flags_error(&r),
        (RESPONSE | ERROR, 1),
        "Unrecognized Command"
    );
    let mut f = ata(0xec, 0, 1, &[]);
    f[14] = 0x20;
    let r = ask(&u, &disk, &f, 1500).unwrap();
    assert_eq!(
        flags_error(&r),
        (RESPONSE | ERROR, 5),
        "Unsupported Version"
    );
}

#[test]
fn broadcasts_reach_every_slot_of_the_shelf_and_every_shelf() {
    let u = unit();
    let h = |major, minor| Header::parse(&frame(PC_MAC, major, minor, 1, &[0; 8])).unwrap();
    assert!(u.addressed(&h(0xffff, 0xff)));
    assert!(u.addressed(&h(SHELF, 0xff)));
    assert!(u.addressed(&h(0xffff, SLOT)));
    assert!(!u.addressed(&h(SHELF + 1, SLOT)));
    assert!(!u.addressed(&h(SHELF, SLOT + 1)));
}

#[test]
fn query_config_follows_the_protocol_rules() {
    let (u, disk) = (unit(), MemDisk::new());
    let q = |ccmd, s: &[u8]| ask(&u, &disk, &config(PC_MAC, SHELF, SLOT, ccmd, s), 9000);
    let r = q(0, b"").unwrap();
    let (flags, _, body) = parts(&r);
    assert_eq!(flags, RESPONSE);
    assert_eq!(u16::from_be_bytes([body[0], body[1]]), 16, "buffer count");
    assert_eq!(body[4], 17, "sectors per jumbo frame");
    assert_eq!(body[5] >> 4, 1, "AoE version 1");
    let r = q(3, b"lab-a").unwrap();
    assert_eq!(&parts(&r).2[8..13], b"lab-a");
    let r = q(3, b"lab-b").unwrap();
    assert_eq!(
        flags_error(&r),
        (RESPONSE | ERROR, 4),
        "Config String Present"
    );
    assert!(q(1, b"lab-a").is_some(), "test: exact match answers");
    assert!(q(1, b"lab").is_none(), "test: a mismatch is silent");
    assert!(q(2, b"lab").is_some(), "prefix match answers");
    assert!(q(2, b"lax").is_none());
    let r = q(4, b"lab-b").unwrap();
    assert_eq!(parts(&r).0, RESPONSE, "force set");
    assert_eq!(&parts(&r).2[8..13], b"lab-b");
    assert!(q(3, &[b'x'; 1025]).is_none(), "too long a string is silent");
    let mut lying = config(PC_MAC, SHELF, SLOT, 3, b"ab");
    lying[HEADER_LEN + 7] = 200;
    assert!(
        ask(&u, &disk, &lying, 1500).is_none(),
        "a length past the frame is silent"
    );
}

#[test]
fn the_mac_mask_list_decides_who_is_answered() {
    let (u, disk) = (unit(), MemDisk::new());
    assert!(u.admits(&PC_MAC));
    assert!(!u.admits(&STRANGER), "a stranger is not answered");
    let r = ask(&u, &disk, &mask(0, &[]), 1500).unwrap();
    let (_, _, body) = parts(&r);
    assert_eq!(body[3], 1);
    assert_eq!(&body[6..12], &PC_MAC);
    let r = ask(&u, &disk, &mask(1, &[(1, STRANGER)]), 1500).unwrap();
    assert_eq!(parts(&r).2[2..4], [0, 2]);
    assert!(u.admits(&STRANGER), "added by the PC");
    let r = ask(&u, &disk, &mask(1, &[(2, STRANGER), (2, PC_MAC)]), 1500).unwrap();
    assert_eq!(
        parts(&r).2[2],
        1,
        "an edit that empties the list is refused"
    );
    assert_eq!(u.masks().len(), 2, "and changes nothing");
    let r = ask(&u, &disk, &mask(1, &[(2, STRANGER), (7, STRANGER)]), 1500).unwrap();
    assert_eq!(parts(&r).2[2..4], [2, 1], "Bad Directive at index 1");
    assert!(u.admits(&STRANGER), "a failed edit changes nothing");
    let many: Vec<(u8, [u8; 6])> = (0..70u8).map(|i| (1, [0x02, 1, 0, 0, 0, i])).collect();
    let r = ask(&u, &disk, &mask(1, &many), 1500).unwrap();
    assert_eq!(
        parts(&r).2[2..4],
        [3, 62],
        "List Full when the 65th is added"
    );
    let mut short = mask(1, &[(1, STRANGER)]);
    short.truncate(HEADER_LEN + 4 + 4);
    assert_eq!(
        flags_error(&ask(&u, &disk, &short, 1500).unwrap()),
        (RESPONSE | ERROR, 2)
    );
}

#[test]
fn a_mac_the_pc_let_in_cannot_remove_the_pcs_own() {
    let (u, disk) = (unit(), MemDisk::new());
    // A (the PC) lets B in; B then tries to delete A, alone and after an edit of its own.
    ask(&u, &disk, &mask(1, &[(1, STRANGER)]), 1500).unwrap();
    let other = [0x02, 0, 0, 0, 0, 0x09];
    for (directives, at) in [(vec![(2, PC_MAC)], 0), (vec![(1, other), (2, PC_MAC)], 1)] {
        let mut body = vec![0, 1, 0, directives.len() as u8];
        for (d, mac) in &directives {
            body.extend_from_slice(&[0, *d]);
            body.extend_from_slice(mac);
        }
        let r = ask(&u, &disk, &frame(STRANGER, SHELF, SLOT, 2, &body), 1500).unwrap();
        assert_eq!(&r[0..6], &STRANGER, "answered to B");
        assert_eq!(
            r[HEADER_LEN + 2..HEADER_LEN + 4],
            [1, at],
            "Unspecified Error at the directive that deletes A"
        );
        assert_eq!(u.masks(), vec![PC_MAC, STRANGER], "nothing changed");
    }
    assert!(u.admits(&PC_MAC));
    let r = ask(&u, &disk, &ata(0xec, 0, 1, &[]), 1500).unwrap();
    assert_eq!(flags_error(&r), (RESPONSE, 0), "A still gets answers");
    // The PC can still take B off again.
    let r = ask(&u, &disk, &mask(1, &[(2, STRANGER)]), 1500).unwrap();
    assert_eq!(parts(&r).2[2..4], [0, 1]);
    assert!(!u.admits(&STRANGER));
}

#[test]
fn a_reservation_keeps_others_off_the_disk() {
    let u = aoe::unit();
    let disk = MemDisk::new();
    // The PC lets the stranger in, then reserves the disk for itself.
    ask(&u, &disk, &mask(1, &[(1, STRANGER)]), 1500).unwrap();
    let r = ask(&u, &disk, &resrel(PC_MAC, 1, &[PC_MAC]), 1500).unwrap();
    assert_eq!(parts(&r).2[..8], [1, 1, 2, 0, 0, 0, 0, 2]);
    let mut read = ata(0x20, 0, 1, &[]);
    read[6..12].copy_from_slice(&STRANGER);
    let r = ask(&u, &disk, &read, 1500).unwrap();
    assert_eq!(
        (r[14] & 0x0f, r[15]),
        (RESPONSE | ERROR, 6),
        "Target Reserved"
    );
    let mut identify = ata(0xec, 0, 1, &[]);
    identify[6..12].copy_from_slice(&STRANGER);
    assert_eq!(
        ask(&u, &disk, &identify, 1500).unwrap()[14] & ERROR,
        0,
        "IDENTIFY is allowed"
    );
    let r = ask(&u, &disk, &resrel(STRANGER, 1, &[STRANGER]), 1500).unwrap();
    assert_eq!(r[15], 6, "set by another is refused");
    let r = ask(&u, &disk, &resrel(STRANGER, 2, &[]), 1500).unwrap();
    assert_eq!(r[14] & ERROR, 0, "force set releases");
    assert_eq!(ask(&u, &disk, &read, 1500).unwrap()[14] & ERROR, 0);
}

#[test]
fn the_announcement_goes_to_each_allowed_mac() {
    let u = unit();
    let frames = u.announcements(&port(1500));
    assert_eq!(frames.len(), 1);
    let f = &frames[0];
    assert_eq!(&f[0..6], &PC_MAC);
    assert_eq!(f[14] & 0x0f, RESPONSE);
    assert_eq!(f[19], 1, "a Query Config answer");
    assert_eq!(f[HEADER_LEN + 4], 2, "two sectors per standard frame");
}
