//! The full feature phase of one connection (RFC 7143, error recovery level 0): the
//! CmdSN window, SCSI commands with immediate data and R2T-solicited Data-Out,
//! Data-In with status, NOP-Out/NOP-In both ways, text (SendTargets), task management,
//! logout, and Reject for what breaks the rules. Pure protocol over a [`PduWriter`]: the
//! connection loop feeds it PDUs and tells it when the line is idle.
//!
//! This file: the session's state, dispatch, the CmdSN window, pings, NOP and logout; SCSI
//! commands are in `command.rs`, tasks waiting for data and task management in `tasks.rs`,
//! text in `send_targets.rs`.

mod command;
mod pipeline;
mod send_targets;
mod tasks;

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::login::{Directory, Established};
use super::pdu::*;
use super::reader::{PduRef, PduWriter};
use super::scsi::{self, status, DataOut, Failure, Lu, Nexus, Op, Sense};

/// Commands the initiator may send ahead of ExpCmdSN.
pub const WINDOW: u32 = 128;
/// Data-out commands waiting for their data, at most.
const MAX_TASKS: usize = 128;
/// An idle initiator is pinged after this long, and dropped when it has not answered
/// within the same time again.
pub const PING_AFTER: Duration = Duration::from_secs(10);
/// Data-In segments are read from the disk in pieces of at most this size.
const READ_PIECE: u32 = 256 << 10;

/// How the connection should go on after a PDU.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Close after sending what is buffered (a logout, or a broken rule).
    Close(String),
}

/// What the session serves.
pub enum Kind {
    Discovery,
    Normal { lu: Arc<Lu>, nexus: Nexus },
}

/// What SendTargets needs: who asks, the directory, and the portals to report.
pub struct Discovery<'a> {
    pub directory: &'a dyn Directory,
    /// Portals as configured; an unspecified address is reported as `local`.
    pub portals: Vec<SocketAddr>,
    pub local: Option<SocketAddr>,
}

/// How a command's answer is addressed.
#[derive(Debug, Clone, Copy)]
struct Reply {
    itt: u32,
    read: bool,
    expected: u32,
}

/// A command waiting for its data. InitialR2T is Yes: after the immediate data, all of it
/// comes in answer to R2Ts.
struct Task {
    reply: Reply,
    lun: u64,
    op: Op,
    sink: DataOut,
    /// Bytes of data the command takes (at most what the initiator expects to send).
    want: u32,
    /// Bytes the CDB asks for, for the residual.
    cdb_len: u64,
    r2ts: Vec<R2t>,
    next_r2t_offset: u32,
    r2t_sn: u32,
    buffer: Vec<u8>,
    failure: Option<Failure>,
    miscompare: Option<u64>,
}

struct R2t {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    data_sn: u32,
}

pub struct Session<'a, W: Write> {
    out: PduWriter<W>,
    est: Established,
    stat_sn: u32,
    exp_cmd_sn: u32,
    /// CmdSNs received past a gap, so ExpCmdSN can move over them.
    ahead: BTreeSet<u32>,
    kind: Kind,
    discovery: Discovery<'a>,
    tasks: HashMap<u32, Task>,
    next_ttt: u32,
    ping: Option<(u32, Instant)>,
    last_heard: Instant,
    /// A long text response being sent in pieces: (TTT, what is left).
    text_left: Option<(u32, Vec<u8>)>,
    buf: Vec<u8>,
    /// Idle pings go to initiators that answer them: not iPXE, not discovery sessions.
    pings: bool,
    ping_after: Duration,
    /// Reads and writes in flight (a disk that gains from it, `pipeline.rs`).
    pipeline: pipeline::Pipeline,
}

/// iPXE's ISIDs carry its IANA enterprise number (Fen Systems, 0x002723); it ignores NOP-In
/// pings, so it is not dropped for failing to answer them (TCP keepalive finds a dead one).
pub fn is_ipxe(isid: &[u8; 6]) -> bool {
    isid[..4] == [0x40, 0x00, 0x27, 0x23]
}

fn lun_is_zero(lun: u64) -> bool {
    lun == 0
}

impl<'a, W: Write> Session<'a, W> {
    pub fn new(
        mut out: PduWriter<W>,
        est: Established,
        kind: Kind,
        discovery: Discovery<'a>,
    ) -> Self {
        out.set_digests(super::reader::Digests {
            header: est.params.header_digest,
            data: est.params.data_digest,
        });
        let pings = matches!(kind, Kind::Normal { .. }) && !is_ipxe(&est.isid);
        Session {
            pings,
            ping_after: PING_AFTER,
            out,
            stat_sn: est.stat_sn,
            exp_cmd_sn: est.exp_cmd_sn,
            est,
            ahead: BTreeSet::new(),
            kind,
            discovery,
            tasks: HashMap::new(),
            next_ttt: 1,
            ping: None,
            last_heard: Instant::now(),
            text_left: None,
            buf: Vec::new(),
            pipeline: pipeline::Pipeline::default(),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Answers every read and write in flight: before the session waits for the
    /// initiator, which may be waiting for those answers.
    pub fn settle(&mut self) -> io::Result<()> {
        self.drain()
    }

    /// Answers the reads and writes in flight that are done, waiting for none; true
    /// while some are still in flight.
    pub fn answer_done(&mut self) -> io::Result<bool> {
        pipeline::answered(self)
    }

    /// Readable once a read or write in flight finishes; None while none is in flight.
    pub fn in_flight_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pipeline.done_fd()
    }

    /// How long the line may be quiet before a ping, and a ping unanswered before the
    /// connection is dropped.
    pub fn set_ping_after(&mut self, d: Duration) {
        self.ping_after = d;
    }

    pub fn writer(&mut self) -> &mut W {
        self.out.get_mut()
    }

    /// Numbers for a response that carries status (and so takes a StatSN).
    fn status_sn(&mut self) -> SeqNumbers {
        let sn = self.peek_sn();
        self.stat_sn = self.stat_sn.wrapping_add(1);
        sn
    }

    /// Numbers for a PDU that does not take a StatSN (R2T, Data-In, a ping).
    fn peek_sn(&self) -> SeqNumbers {
        SeqNumbers {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.exp_cmd_sn.wrapping_add(WINDOW - 1),
        }
    }

    fn ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    /// True when the CmdSN is one to act on; a command outside the window is dropped
    /// without an answer (§4.2.2.1). Immediate commands do not take a CmdSN.
    fn take_cmd_sn(&mut self, cmd_sn: u32, immediate: bool) -> bool {
        if immediate {
            return true;
        }
        let max = self.exp_cmd_sn.wrapping_add(WINDOW - 1);
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            while self.ahead.remove(&self.exp_cmd_sn) {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            }
            true
        } else if sn_lt(self.exp_cmd_sn, cmd_sn) && sn_le(cmd_sn, max) {
            self.ahead.insert(cmd_sn)
        } else {
            tracing::debug!(
                "iSCSI: dropped a command with CmdSN {cmd_sn} outside the window {}..={max}",
                self.exp_cmd_sn
            );
            false
        }
    }

    /// Answers one PDU.
    pub fn handle(&mut self, pdu: &PduRef<'_>) -> io::Result<Next> {
        self.last_heard = Instant::now();
        let b = &pdu.bhs;
        let Some(op) = InitiatorOpcode::from_byte(b.opcode_byte()) else {
            self.reject(RejectReason::CommandNotSupported, b)?;
            return Ok(Next::Continue);
        };
        // Everything but a command runs after what is in flight, as if it had run in turn.
        if op != InitiatorOpcode::ScsiCommand {
            self.drain()?;
        }
        match op {
            InitiatorOpcode::NopOut => self.nop_out(b, pdu.data),
            InitiatorOpcode::ScsiCommand => self.scsi_command(b, pdu.ahs, pdu.data),
            InitiatorOpcode::DataOut => self.data_out(b, pdu.data),
            InitiatorOpcode::TaskManagement => self.task_management(b),
            InitiatorOpcode::Text => self.text(b, pdu.data),
            InitiatorOpcode::Logout => self.logout(b),
            InitiatorOpcode::Snack => {
                // Error recovery level 0 has no SNACK.
                self.reject(RejectReason::ProtocolError, b)?;
                Ok(Next::Continue)
            }
            InitiatorOpcode::Login => {
                self.reject(RejectReason::ProtocolError, b)?;
                Ok(Next::Close(
                    "a Login Request came in the full feature phase".into(),
                ))
            }
        }
    }

    /// How long the initiator has sent nothing.
    pub fn quiet(&self) -> Duration {
        self.last_heard.elapsed()
    }

    /// The line has been quiet: ping the initiator, or give up on one that does not answer.
    pub fn idle(&mut self) -> io::Result<Next> {
        if !self.pings {
            return Ok(Next::Continue);
        }
        let quiet = self.last_heard.elapsed();
        if let Some((_, sent)) = self.ping {
            if sent.elapsed() >= self.ping_after {
                return Ok(Next::Close(format!(
                    "the initiator has not answered a NOP-In for {} s",
                    sent.elapsed().as_secs()
                )));
            }
            return Ok(Next::Continue);
        }
        if quiet >= self.ping_after {
            let ttt = self.ttt();
            let bhs = nop_in(0, RESERVED_TAG, ttt, self.peek_sn(), 0);
            self.out.send(&bhs, &[])?;
            self.out.flush()?;
            self.ping = Some((ttt, Instant::now()));
        }
        Ok(Next::Continue)
    }

    /// A PDU whose data digest was wrong: its command is rejected, the line goes on.
    pub fn data_digest_error(&mut self, b: &Bhs) -> io::Result<Next> {
        if b.opcode_byte() == 0x01 {
            // The command is dropped, but its CmdSN counts as received.
            self.take_cmd_sn(b.u32_at(24), b.immediate());
        } else if b.opcode_byte() == 0x05 {
            // A Data-Out: at level 0 the command fails; drop it, and its data with it.
            let itt = b.itt();
            if self.tasks.remove(&itt).is_some() {
                let sense = Sense::new(scsi::sense::Key::AbortedCommand, 0x47, 0x05);
                self.respond_failure(itt, Failure::Check(sense), Residual::default())?;
            }
        }
        self.reject(RejectReason::DataDigestError, b)?;
        Ok(Next::Continue)
    }

    fn reject(&mut self, reason: RejectReason, rejected: &Bhs) -> io::Result<()> {
        let bhs = reject(reason, self.status_sn(), 0);
        self.out.send(&bhs, &rejected.0)
    }

    fn nop_out(&mut self, b: &Bhs, data: &[u8]) -> io::Result<Next> {
        let c = Common::parse(b);
        if c.itt == RESERVED_TAG {
            // The answer to our ping (or a lone ping that wants no answer).
            if self.ping.is_some_and(|(ttt, _)| ttt == c.tag2) {
                self.ping = None;
            }
            return Ok(Next::Continue);
        }
        if !self.take_cmd_sn(c.cmd_sn, c.immediate) {
            return Ok(Next::Continue);
        }
        let echo = &data[..data
            .len()
            .min(self.est.params.initiator_max_recv_data as usize)];
        let bhs = nop_in(c.lun, c.itt, RESERVED_TAG, self.status_sn(), echo.len());
        self.out.send(&bhs, echo)?;
        Ok(Next::Continue)
    }

    fn logout(&mut self, b: &Bhs) -> io::Result<Next> {
        let c = Common::parse(b);
        self.take_cmd_sn(c.cmd_sn, c.immediate);
        let reason = c.flags & 0x7f;
        // 0: close the session, 1: close this connection; 2 (recovery) is level 2's.
        let response = if reason == 2 { 2 } else { 0 };
        let bhs = logout_response(c.itt, response, self.status_sn());
        self.out.send(&bhs, &[])?;
        self.out.flush()?;
        if response == 0 {
            Ok(Next::Close("the initiator logged out".into()))
        } else {
            Ok(Next::Continue)
        }
    }

    fn respond_failure(&mut self, itt: u32, f: Failure, residual: Residual) -> io::Result<()> {
        match f {
            Failure::ReservationConflict => {
                let bhs = scsi_response(
                    itt,
                    status::RESERVATION_CONFLICT,
                    residual,
                    self.status_sn(),
                );
                self.out.send(&bhs, &[])
            }
            Failure::Check(sense) => {
                let s = sense.fixed();
                let mut bhs =
                    scsi_response(itt, status::CHECK_CONDITION, residual, self.status_sn());
                bhs.set_data_len(2 + s.len());
                self.out.send_header(&bhs)?;
                self.out.send_data(&[&scsi::inquiry::be16(s.len()), &s])
            }
        }
    }

    /// The session ended: a reservation it held is released.
    /// Where the session stands, when it stands still: no command waits for data, no text
    /// answer is half sent, no ping is unanswered and no CmdSN is missing. A handover to
    /// the next process resumes it from here with [`Session::new`].
    pub fn suspend(&self) -> Option<Established> {
        let still = self.tasks.is_empty()
            && self.pipeline.is_empty()
            && self.text_left.is_none()
            && self.ping.is_none()
            && self.ahead.is_empty();
        still.then(|| Established {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            ..self.est.clone()
        })
    }

    pub fn end(&mut self) {
        self.pipeline.abandon();
        if let Kind::Normal { lu, nexus } = &self.kind {
            lu.nexus_lost(*nexus);
        }
    }
}
