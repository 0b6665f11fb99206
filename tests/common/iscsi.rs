//! An in-memory iSCSI initiator for the protocol tests: PDU builders and a one-PC
//! directory and portal over the memory disk of `disk`.

use std::net::SocketAddr;
use std::sync::Arc;

use cowctl::iscsi::chap::Credentials;
use cowctl::iscsi::login::{Access, Directory, Established, SessionKind};
use cowctl::iscsi::pdu::{Bhs, LoginStatus};
use cowctl::iscsi::reader::PduReader;
use cowctl::iscsi::scsi::{Identity, Lu, Reservation};
use cowctl::iscsi::{Attachment, Portal};

pub const TARGET: &str = "iqn.2024-01.lan.test:pc";
pub const INITIATOR: &str = "iqn.2024-01.lan.pc:pc";
#[allow(unused_imports)] // the iSCSI tests take the disk from here
pub use super::disk::{DiskRef, MemDisk, DISK_SIZE};

/// One PC's target: `allowed` initiators (None: any), optional CHAP.
pub struct OnePc {
    pub disk: Arc<MemDisk>,
    pub allowed: Option<String>,
    pub chap: Option<Credentials>,
    pub reservation: Arc<Reservation>,
}

impl OnePc {
    pub fn open() -> OnePc {
        OnePc {
            disk: MemDisk::new(),
            allowed: None,
            chap: None,
            reservation: Arc::default(),
        }
    }

    pub fn lu(&self) -> Arc<Lu> {
        Arc::new(Lu::new(
            Identity::for_pc("pc", TARGET),
            self.reservation.clone(),
            Box::new(DiskRef(self.disk.clone())),
        ))
    }
}

impl Directory for OnePc {
    fn access(&self, target: &str, initiator: &str) -> Result<Access, LoginStatus> {
        if target != TARGET {
            return Err(LoginStatus::NOT_FOUND);
        }
        if self.allowed.as_deref().is_some_and(|a| a != initiator) {
            return Err(LoginStatus::AUTHORIZATION_FAILURE);
        }
        Ok(Access {
            target: target.into(),
            chap: self.chap.clone(),
        })
    }
    fn visible(&self, initiator: &str) -> Vec<String> {
        if self.allowed.as_deref().is_some_and(|a| a != initiator) {
            Vec::new()
        } else {
            vec![TARGET.into()]
        }
    }
}

impl Portal for OnePc {
    fn directory(&self) -> &dyn Directory {
        self
    }
    fn attach(
        &self,
        est: &Established,
        _peer: SocketAddr,
        _close: Box<dyn Fn() + Send>,
    ) -> Result<Attachment, LoginStatus> {
        assert!(matches!(est.kind, SessionKind::Normal { .. }));
        Ok(Attachment {
            lu: self.lu(),
            nexus: 1,
            guard: Box::new(()),
        })
    }
    fn portals(&self) -> Vec<SocketAddr> {
        vec!["0.0.0.0:3260".parse().unwrap()]
    }
}

/// A PDU's bytes: header, data padded to 4 bytes (no digests).
pub fn pdu(bhs: &Bhs, data: &[u8]) -> Vec<u8> {
    let mut b = *bhs;
    b.set_data_len(data.len());
    let mut out = b.0.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len() + (4 - data.len() % 4) % 4, 0);
    out
}

pub fn keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(format!("{k}={v}").as_bytes());
        out.push(0);
    }
    out
}

/// A Login Request.
pub fn login(csg: u8, nsg: u8, transit: bool, cmd_sn: u32, text: &[u8]) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = 0x43;
    b.0[1] = (u8::from(transit) << 7) | (csg << 2) | nsg;
    b.0[8..14].copy_from_slice(&[0x80, 0, 0, 1, 0, 1]);
    b.set_u32(16, 0x1000);
    b.set_u32(24, cmd_sn);
    pdu(&b, text)
}

/// The leading login of an open target straight to the full feature phase.
pub fn leading_login(cmd_sn: u32) -> Vec<u8> {
    login(
        1,
        3,
        true,
        cmd_sn,
        &keys(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("SessionType", "Normal"),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("MaxBurstLength", "16384"),
            ("FirstBurstLength", "8192"),
        ]),
    )
}

/// A READ(10) (0x28) or WRITE(10) (0x2a) CDB of `blocks` blocks at `lba`.
pub fn rw10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![op, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

/// A SCSI Command with optional immediate data.
pub fn command(
    itt: u32,
    cmd_sn: u32,
    cdb: &[u8],
    expected: u32,
    read: bool,
    write: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = 0x01;
    b.0[1] = 0x80 | (u8::from(read) << 6) | (u8::from(write) << 5);
    b.set_u32(16, itt);
    b.set_u32(20, expected);
    b.set_u32(24, cmd_sn);
    b.0[32..32 + cdb.len()].copy_from_slice(cdb);
    pdu(&b, data)
}

pub fn data_out(
    itt: u32,
    ttt: u32,
    data_sn: u32,
    offset: u32,
    final_bit: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = 0x05;
    b.0[1] = u8::from(final_bit) << 7;
    b.set_u32(16, itt);
    b.set_u32(20, ttt);
    b.set_u32(36, data_sn);
    b.set_u32(40, offset);
    pdu(&b, data)
}

pub fn nop_out(itt: u32, ttt: u32, cmd_sn: u32, immediate: bool, data: &[u8]) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = if immediate { 0x40 } else { 0x00 };
    b.0[1] = 0x80;
    b.set_u32(16, itt);
    b.set_u32(20, ttt);
    b.set_u32(24, cmd_sn);
    pdu(&b, data)
}

pub fn tmf(itt: u32, function: u8, referenced: u32, cmd_sn: u32, ref_cmd_sn: u32) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = 0x42;
    b.0[1] = 0x80 | function;
    b.set_u32(16, itt);
    b.set_u32(20, referenced);
    b.set_u32(24, cmd_sn);
    b.set_u32(32, ref_cmd_sn);
    pdu(&b, &[])
}

pub fn text(itt: u32, cmd_sn: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = 0x44;
    b.0[1] = 0x80;
    b.set_u32(16, itt);
    b.set_u32(20, 0xffff_ffff);
    b.set_u32(24, cmd_sn);
    pdu(&b, data)
}

pub fn logout(itt: u32, cmd_sn: u32) -> Vec<u8> {
    let mut b = Bhs::default();
    b.0[0] = 0x46;
    b.0[1] = 0x80;
    b.set_u32(16, itt);
    b.set_u32(24, cmd_sn);
    pdu(&b, &[])
}

/// A response PDU as the test reads it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub bhs: Bhs,
    pub data: Vec<u8>,
}

impl Reply {
    pub fn opcode(&self) -> u8 {
        self.bhs.opcode_byte()
    }
    pub fn itt(&self) -> u32 {
        self.bhs.itt()
    }
    /// SCSI status (SCSI Response or a Data-In with S).
    pub fn status(&self) -> u8 {
        self.bhs.0[3]
    }
    /// (sense key, ASC, ASCQ) of a CHECK CONDITION.
    pub fn sense(&self) -> (u8, u8, u8) {
        let s = &self.data[2..];
        (s[2] & 0x0f, s[12], s[13])
    }
    pub fn residual(&self) -> (bool, bool, u32) {
        let f = self.bhs.0[1];
        (f & 0x04 != 0, f & 0x02 != 0, self.bhs.u32_at(44))
    }
}

/// Every PDU in `bytes`.
pub fn replies(bytes: &[u8]) -> Vec<Reply> {
    let mut r = PduReader::new(bytes, 1 << 24);
    let mut out = Vec::new();
    while let Ok(p) = r.read_pdu() {
        out.push(Reply {
            bhs: p.bhs,
            data: p.data.to_vec(),
        });
    }
    out
}
