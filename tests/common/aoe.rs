//! AoE request frames as an initiator sends them, for the protocol tests and the fuzzer.

#![allow(clippy::cast_possible_truncation)] // frame fields from small test values

use cowctl::aoe::ata::Identity;
use cowctl::aoe::wire::{ETHERTYPE, HEADER_LEN};
use cowctl::aoe::{Port, Unit};

pub const TARGET_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const PC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const STRANGER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
pub const SHELF: u16 = 7;
pub const SLOT: u8 = 3;

/// A port with a standard MTU (two sectors a frame) or a jumbo one.
pub fn port(mtu: usize) -> Port {
    Port {
        mac: TARGET_MAC,
        mtu,
        buffers: 16,
    }
}

/// The PC's target e7.3, answering PC_MAC only.
pub fn unit() -> Unit {
    Unit::new(SHELF, SLOT, Identity::for_pc("pc"), &[PC_MAC])
}

/// A request from `src` to `major.minor` with tag 0x01020304.
pub fn frame(src: [u8; 6], major: u16, minor: u8, command: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN];
    f[0..6].copy_from_slice(&TARGET_MAC);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f[14] = 0x10;
    f[16..18].copy_from_slice(&major.to_be_bytes());
    f[18] = minor;
    f[19] = command;
    f[20..24].copy_from_slice(&[1, 2, 3, 4]);
    f.extend_from_slice(body);
    f
}

/// An ATA command to e7.3 from PC_MAC.
pub fn ata(command: u8, lba: u64, sectors: u8, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 12];
    b[0] = if command == 0x24 || command == 0x34 {
        0x40
    } else {
        0
    };
    if command == 0x30 || command == 0x34 {
        b[0] |= 0x01;
    }
    b[2] = sectors;
    b[3] = command;
    for i in 0..6 {
        b[4 + i] = (lba >> (8 * i)) as u8;
    }
    b.extend_from_slice(data);
    frame(PC_MAC, SHELF, SLOT, 0, &b)
}

/// Query Config with a config string.
pub fn config(src: [u8; 6], major: u16, minor: u8, ccmd: u8, string: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    b[5] = 0x10 | ccmd;
    b[6..8].copy_from_slice(&(string.len() as u16).to_be_bytes());
    b.extend_from_slice(string);
    frame(src, major, minor, 1, &b)
}

/// Mac Mask List: mcmd 0 read, 1 edit, with (directive, MAC) pairs.
pub fn mask(mcmd: u8, directives: &[(u8, [u8; 6])]) -> Vec<u8> {
    let mut b = vec![0, mcmd, 0, directives.len() as u8];
    for (d, mac) in directives {
        b.extend_from_slice(&[0, *d]);
        b.extend_from_slice(mac);
    }
    frame(PC_MAC, SHELF, SLOT, 2, &b)
}

/// Reserve/Release from `src`: rcmd 0 read, 1 set, 2 force set.
pub fn resrel(src: [u8; 6], rcmd: u8, macs: &[[u8; 6]]) -> Vec<u8> {
    let mut b = vec![rcmd, macs.len() as u8];
    for mac in macs {
        b.extend_from_slice(mac);
    }
    frame(src, SHELF, SLOT, 3, &b)
}
