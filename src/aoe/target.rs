//! One AoE target (a shelf.slot) and how it answers a request frame: the ATA command on its
//! disk, Query Config with its config string, the Mac Mask List that decides who may talk
//! to it, and Reserve/Release. Pure logic over bytes and a [`Disk`]; the socket and the
//! PCs' slots are the service's.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::ata::{self, Identity};
use super::frame::FrameBuf;
use super::wire::{
    self, command, config_reply, mask_error, Ata, Error, Header, Mask, Resrel, ANY_SHELF, ANY_SLOT,
    ATA_LEN, CONFIG_LEN, HEADER_LEN, MASK_LEN, MAX_CONFIG, RESREL_LEN,
};
use crate::engine::disk::Disk;

/// The most MACs a Mac Mask List holds.
pub const MAX_MASKS: usize = 64;
/// The most MACs a reservation names (the count is one byte).
pub const MAX_RESERVED: usize = 255;
/// The smallest Ethernet frame (without its checksum): shorter answers are padded.
const MIN_FRAME: usize = 60;
/// What Query Config reports as the firmware version.
const FIRMWARE: u16 = 0x4000 | 1;

/// The interface a target answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub mac: [u8; 6],
    pub mtu: usize,
    /// How many requests may be outstanding (Query Config's Buffer Count).
    pub buffers: u16,
}

impl Port {
    /// Sectors one frame carries: what fits in the MTU after the AoE and ATA headers.
    pub fn max_sectors(&self) -> u8 {
        let room = self.mtu.saturating_sub(HEADER_LEN - 14 + ATA_LEN) / ata::SECTOR;
        u8::try_from(room).unwrap_or(u8::MAX)
    }
}

#[derive(Debug, Default)]
struct State {
    config: Vec<u8>,
    masks: Vec<[u8; 6]>,
    reserved: Vec<[u8; 6]>,
}

pub struct Unit {
    pub shelf: u16,
    pub slot: u8,
    pub identity: Identity,
    /// The PC's own MACs (the manifest's): no Mac Mask request removes them, or a MAC the
    /// PC let in could lock the PC out of its disk until the service restarts.
    own: Vec<[u8; 6]>,
    /// Read for every frame (the mask list, the reservation), written by the rare commands
    /// that change them.
    state: RwLock<State>,
}

impl Unit {
    /// A target that answers only `macs` (never empty for a PC: the manifest insists).
    pub fn new(shelf: u16, slot: u8, identity: Identity, macs: &[[u8; 6]]) -> Unit {
        let mut masks = macs.to_vec();
        masks.truncate(MAX_MASKS);
        Unit {
            shelf,
            slot,
            identity,
            own: masks.clone(),
            state: RwLock::new(State {
                masks,
                ..State::default()
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a frame is for this shelf.slot (or for every shelf or slot).
    pub fn addressed(&self, h: &Header) -> bool {
        (h.major == self.shelf || h.major == ANY_SHELF)
            && (h.minor == self.slot || h.minor == ANY_SLOT)
    }

    /// Whether `mac` is on the Mac Mask List. An empty list would admit everyone; cowctl
    /// never lets it become empty.
    pub fn admits(&self, mac: &[u8; 6]) -> bool {
        let s = self.read();
        s.masks.is_empty() || s.masks.contains(mac)
    }

    pub fn masks(&self) -> Vec<[u8; 6]> {
        self.read().masks.clone()
    }

    /// The answer to a request frame `f` (addressed to this unit, from an admitted MAC),
    /// or None where the protocol says to stay silent.
    pub fn answer(&self, h: &Header, f: &[u8], disk: &dyn Disk, port: &Port) -> Option<Vec<u8>> {
        let mut out = FrameBuf::default();
        self.answer_into(h, f, disk, port, &mut out)
            .then(|| out.to_vec())
    }

    /// [`Unit::answer`] into a buffer the caller keeps (a read's data goes straight into
    /// it); false for silence.
    pub fn answer_into(
        &self,
        h: &Header,
        f: &[u8],
        disk: &dyn Disk,
        port: &Port,
        out: &mut FrameBuf,
    ) -> bool {
        out.clear();
        let body = &f[HEADER_LEN..];
        if h.version == wire::VERSION && h.command == command::ATA {
            if !self.ata(h, body, disk, port, out) {
                return false;
            }
        } else {
            let answer = match h.command {
                _ if h.version != wire::VERSION => {
                    Some(self.error(h, port, Error::UnsupportedVersion, &[]))
                }
                command::QUERY_CONFIG => self.config(h, body, port),
                command::MAC_MASK => self.mask(h, body, port),
                command::RESERVE_RELEASE => self.resrel(h, body, port),
                _ => Some(self.error(h, port, Error::UnrecognizedCommand, &[])),
            };
            let Some(answer) = answer else { return false };
            out.push(&answer);
        }
        out.pad_to(MIN_FRAME);
        true
    }

    fn reply(&self, h: &Header, port: &Port, error: Option<Error>, parts: &[&[u8]]) -> Vec<u8> {
        let len = HEADER_LEN + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len.max(MIN_FRAME));
        out.extend_from_slice(&h.reply(port.mac, self.shelf, self.slot, error));
        for p in parts {
            out.extend_from_slice(p);
        }
        out
    }

    fn error(&self, h: &Header, port: &Port, e: Error, echo: &[u8]) -> Vec<u8> {
        self.reply(h, port, Some(e), &[echo])
    }

    /// An ATA command's answer into `out`: headers, then the data read straight after them.
    fn ata(
        &self,
        h: &Header,
        body: &[u8],
        disk: &dyn Disk,
        port: &Port,
        out: &mut FrameBuf,
    ) -> bool {
        let Some(a) = Ata::parse(body) else {
            return false;
        };
        let echo = &body[..ATA_LEN];
        let refuse = |out: &mut FrameBuf, e: Error| {
            out.clear();
            out.push(&h.reply(port.mac, self.shelf, self.slot, Some(e)));
            out.push(echo);
        };
        if a.command != ata::op::IDENTIFY {
            let s = self.read();
            if !s.reserved.is_empty() && !s.reserved.contains(&h.src) {
                refuse(out, Error::TargetReserved);
                return true;
            }
        }
        out.push(&h.reply(port.mac, self.shelf, self.slot, None));
        out.push(&[0; ATA_LEN]);
        let payload = &body[ATA_LEN..];
        match ata::execute(&a, payload, disk, &self.identity, port.max_sectors(), out) {
            Err(ata::BadArgument) => refuse(out, Error::BadArgument),
            Ok(r) => out[HEADER_LEN..HEADER_LEN + ATA_LEN]
                .copy_from_slice(&a.reply(r.error, r.sectors, r.status)),
        }
        true
    }

    fn config(&self, h: &Header, body: &[u8], port: &Port) -> Option<Vec<u8>> {
        const READ: u8 = 0;
        const TEST: u8 = 1;
        const PREFIX: u8 = 2;
        const SET: u8 = 3;
        const FORCE_SET: u8 = 4;
        let head = body.get(..CONFIG_LEN)?;
        let ccmd = head[5] & 0x0f;
        let len = usize::from(u16::from_be_bytes([head[6], head[7]]));
        let string = body
            .get(CONFIG_LEN..CONFIG_LEN + len)
            .filter(|_| len <= MAX_CONFIG);
        let mut s = self.lock();
        let mut error = None;
        match (ccmd, string) {
            (READ, _) => {}
            // Test and prefix are how initiators find a target: the others stay silent.
            (TEST, Some(t)) if t == s.config.as_slice() => {}
            (PREFIX, Some(t)) if s.config.starts_with(t) => {}
            (TEST | PREFIX, _) => return None,
            (SET, Some(t)) if s.config.is_empty() || t == s.config.as_slice() => {
                s.config = t.to_vec()
            }
            (SET, Some(_)) => error = Some(Error::ConfigStringPresent),
            (FORCE_SET, Some(t)) => s.config = t.to_vec(),
            (SET | FORCE_SET, None) => return None,
            _ => error = Some(Error::BadArgument),
        }
        let head = config_reply(
            port.buffers,
            FIRMWARE,
            port.max_sectors(),
            ccmd,
            s.config.len(),
        );
        Some(self.reply(h, port, error, &[&head, &s.config]))
    }

    fn mask(&self, h: &Header, body: &[u8], port: &Port) -> Option<Vec<u8>> {
        const READ: u8 = 0;
        const EDIT: u8 = 1;
        const NOP: u8 = 0;
        const ADD: u8 = 1;
        const DELETE: u8 = 2;
        let head = body.get(..MASK_LEN)?;
        let Some(m) = Mask::parse(body) else {
            return Some(self.error(h, port, Error::BadArgument, head));
        };
        let mut s = self.lock();
        let answer = |s: &State, merror: u8, count: usize| {
            let mut b = vec![0, m.mcmd, merror, u8::try_from(count).unwrap_or(u8::MAX)];
            if merror == 0 {
                for mac in &s.masks {
                    b.extend_from_slice(&[0, 0]);
                    b.extend_from_slice(mac);
                }
            }
            b
        };
        let b = match m.mcmd {
            READ => answer(&s, 0, s.masks.len()),
            EDIT => {
                let mut next = s.masks.clone();
                let mut failed = None;
                for (i, d) in m.directives.iter().enumerate() {
                    match d.command {
                        NOP => {}
                        ADD if next.contains(&d.mac) => {}
                        ADD if next.len() >= MAX_MASKS => failed = Some((mask_error::LIST_FULL, i)),
                        ADD => next.push(d.mac),
                        DELETE if self.own.contains(&d.mac) => {
                            failed = Some((mask_error::UNSPECIFIED, i))
                        }
                        DELETE => next.retain(|x| x != &d.mac),
                        _ => failed = Some((mask_error::BAD_DIRECTIVE, i)),
                    }
                    if failed.is_some() {
                        break;
                    }
                }
                // An empty list would open the disk to the whole LAN: refused.
                if failed.is_none() && next.is_empty() {
                    failed = Some((mask_error::UNSPECIFIED, m.directives.len()));
                }
                match failed {
                    Some((merror, at)) => answer(&s, merror, at),
                    None => {
                        s.masks = next;
                        answer(&s, 0, s.masks.len())
                    }
                }
            }
            _ => return Some(self.error(h, port, Error::BadArgument, head)),
        };
        Some(self.reply(h, port, None, &[&b]))
    }

    fn resrel(&self, h: &Header, body: &[u8], port: &Port) -> Option<Vec<u8>> {
        const READ: u8 = 0;
        const SET: u8 = 1;
        const FORCE_SET: u8 = 2;
        let head = body.get(..RESREL_LEN)?;
        let Some(r) = Resrel::parse(body) else {
            return Some(self.error(h, port, Error::BadArgument, head));
        };
        let mut s = self.lock();
        match r.rcmd {
            READ => {}
            SET if !s.reserved.is_empty() && !s.reserved.contains(&h.src) => {
                return Some(self.error(h, port, Error::TargetReserved, head));
            }
            SET | FORCE_SET => {
                let mut macs = r.macs;
                macs.truncate(MAX_RESERVED);
                s.reserved = macs;
            }
            _ => return Some(self.error(h, port, Error::BadArgument, head)),
        }
        let mut b = vec![r.rcmd, u8::try_from(s.reserved.len()).unwrap_or(u8::MAX)];
        for mac in &s.reserved {
            b.extend_from_slice(mac);
        }
        Some(self.reply(h, port, None, &[&b]))
    }

    /// The unsolicited Query Config answer a target sends when it starts, so initiators
    /// find it at once: one to each allowed MAC.
    pub fn announcements(&self, port: &Port) -> Vec<Vec<u8>> {
        let s = self.read();
        let head = config_reply(
            port.buffers,
            FIRMWARE,
            port.max_sectors(),
            0,
            s.config.len(),
        );
        s.masks
            .iter()
            .map(|mac| {
                let asker = Header {
                    dst: port.mac,
                    src: *mac,
                    version: wire::VERSION,
                    flags: 0,
                    major: self.shelf,
                    minor: self.slot,
                    command: command::QUERY_CONFIG,
                    tag: [0; 4],
                };
                let mut out = self.reply(&asker, port, None, &[&head, &s.config]);
                out.resize(out.len().max(MIN_FRAME), 0);
                out
            })
            .collect()
    }
}
