//! The full feature phase of one connection (RFC 7143, error recovery level 0): the
//! CmdSN window, SCSI commands with immediate data and R2T-solicited Data-Out,
//! Data-In with status, NOP-Out/NOP-In both ways, text (SendTargets), task management,
//! logout, and Reject for what breaks the rules. Pure protocol over a [`PduWriter`]: the
//! connection loop feeds it PDUs and tells it when the line is idle.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::login::{Directory, Established, PORTAL_GROUP};
use super::pdu::*;
use super::reader::{PduRef, PduWriter};
use super::scsi::{self, status, DataIn, DataOut, Done, Failure, Lu, Nexus, Op, Sense};
use super::text::Pairs;

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
}

/// iPXE's ISIDs carry its IANA enterprise number (Fen Systems, 0x002723); it ignores NOP-In
/// pings, so it is not dropped for failing to answer them (TCP keepalive finds a dead one).
pub fn is_ipxe(isid: &[u8; 6]) -> bool {
    isid[..4] == [0x40, 0x00, 0x27, 0x23]
}

fn lun_is_zero(lun: u64) -> bool {
    lun == 0
}

fn valid_send_targets(v: &str) -> bool {
    v == "All"
        || v.is_empty()
        || v.starts_with("iqn.")
        || v.starts_with("eui.")
        || v.starts_with("naa.")
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
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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

    fn text(&mut self, b: &Bhs, data: &[u8]) -> io::Result<Next> {
        let c = Common::parse(b);
        if !self.take_cmd_sn(c.cmd_sn, c.immediate) {
            return Ok(Next::Continue);
        }
        // A follow-up for the rest of a long answer.
        if c.tag2 != RESERVED_TAG {
            if let Some((ttt, left)) = self.text_left.take() {
                if ttt == c.tag2 {
                    return self.send_text(c.itt, left).map(|()| Next::Continue);
                }
            }
        }
        self.text_left = None;
        if b.flags() & 0x40 != 0 {
            // Continued requests: SendTargets fits in one PDU; anything longer is refused.
            self.reject(RejectReason::InvalidPduField, b)?;
            return Ok(Next::Continue);
        }
        let keys = match Pairs::parse(data) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!("iSCSI: bad text request: {}", crate::logtext::Escaped(e));
                self.reject(RejectReason::ProtocolError, b)?;
                return Ok(Next::Continue);
            }
        };
        // The only request served is SendTargets (of all targets, one, or the session's).
        let what = match keys.0.as_slice() {
            [(k, v)] if k == "SendTargets" && valid_send_targets(v) => v.clone(),
            _ => {
                self.reject(RejectReason::ProtocolError, b)?;
                return Ok(Next::Continue);
            }
        };
        let mut answer = Pairs::default();
        self.send_targets(&what, &mut answer);
        self.send_text(c.itt, answer.encode())?;
        Ok(Next::Continue)
    }

    fn send_targets(&self, what: &str, answer: &mut Pairs) {
        let visible = self.discovery.directory.visible(&self.est.initiator);
        let targets: Vec<String> = match what {
            "All" => visible,
            // In a normal session, an empty value means the session's own target.
            "" => match &self.est.kind {
                super::login::SessionKind::Normal { target } => vec![target.clone()],
                _ => Vec::new(),
            },
            name => visible.into_iter().filter(|t| t == name).collect(),
        };
        for t in targets {
            answer.push("TargetName", t);
            for p in &self.discovery.portals {
                let addr = match (p.ip().is_unspecified(), self.discovery.local) {
                    (true, Some(local)) => SocketAddr::new(local.ip().to_canonical(), p.port()),
                    _ => *p,
                };
                answer.push("TargetAddress", format!("{addr},{PORTAL_GROUP}"));
            }
        }
    }

    /// Sends a text answer, in pieces of what the initiator receives when it is long.
    fn send_text(&mut self, itt: u32, mut text: Vec<u8>) -> io::Result<()> {
        let max = self.est.params.initiator_max_recv_data as usize;
        if text.len() > max {
            let rest = text.split_off(max);
            let ttt = self.ttt();
            let bhs = text_response(itt, false, true, ttt, self.status_sn(), text.len());
            self.text_left = Some((ttt, rest));
            return self.out.send(&bhs, &text);
        }
        let bhs = text_response(itt, true, false, RESERVED_TAG, self.status_sn(), text.len());
        self.out.send(&bhs, &text)
    }

    fn task_management(&mut self, b: &Bhs) -> io::Result<Next> {
        let c = Common::parse(b);
        if !self.take_cmd_sn(c.cmd_sn, c.immediate) {
            return Ok(Next::Continue);
        }
        let function = c.flags & 0x7f;
        let Kind::Normal { lu, nexus } = &self.kind else {
            self.reject(RejectReason::ProtocolError, b)?;
            return Ok(Next::Continue);
        };
        let (lu, _nexus) = (lu.clone(), *nexus);
        let response = match function {
            // ABORT TASK
            1 => {
                if self.tasks.remove(&c.tag2).is_some() {
                    TmfResponse::Complete
                } else if sn_le(self.exp_cmd_sn, c.ref_cmd_sn) && sn_lt(c.ref_cmd_sn, c.cmd_sn) {
                    // Never arrived, but within the window: taken as received (§11.5.1).
                    TmfResponse::Complete
                } else {
                    TmfResponse::TaskDoesNotExist
                }
            }
            // ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET WARM/COLD RESET
            2 | 4 | 5 | 6 | 7 => {
                if function != 6 && function != 7 && !lun_is_zero(c.lun) {
                    TmfResponse::LunDoesNotExist
                } else {
                    self.tasks.clear();
                    if function >= 5 {
                        lu.reset();
                    }
                    TmfResponse::Complete
                }
            }
            // CLEAR ACA: no ACA here.
            3 => TmfResponse::NotSupported,
            // TASK REASSIGN needs error recovery level 2.
            8 => TmfResponse::NotSupported,
            _ => TmfResponse::Rejected,
        };
        let bhs = tmf_response(c.itt, response, self.status_sn());
        self.out.send(&bhs, &[])?;
        if function == 7 && response == TmfResponse::Complete {
            self.out.flush()?;
            return Ok(Next::Close(
                "the initiator asked for a target cold reset".into(),
            ));
        }
        Ok(Next::Continue)
    }

    fn scsi_command(&mut self, b: &Bhs, ahs: &[u8], data: &[u8]) -> io::Result<Next> {
        let cmd = ScsiCommand::parse(b);
        if !self.take_cmd_sn(cmd.cmd_sn, cmd.immediate) {
            return Ok(Next::Continue);
        }
        let Kind::Normal { lu, nexus } = &self.kind else {
            self.reject(RejectReason::ProtocolError, b)?;
            return Ok(Next::Close(
                "a SCSI command came in a discovery session".into(),
            ));
        };
        let (lu, nexus) = (lu.clone(), *nexus);
        let p = self.est.params;
        // Immediate data: only when negotiated, within the first burst and what was
        // expected; no unsolicited Data-Out (InitialR2T=Yes), so F is always set.
        let data_ok = data.is_empty()
            || (p.immediate_data
                && cmd.write
                && data.len() as u64 <= u64::from(p.first_burst)
                && data.len() as u64 <= u64::from(cmd.expected_len));
        if !data_ok || !cmd.final_bit {
            self.reject(RejectReason::ProtocolError, b)?;
            return Ok(Next::Continue);
        }
        if self.tasks.contains_key(&cmd.itt) {
            self.reject(RejectReason::TaskInProgress, b)?;
            return Ok(Next::Continue);
        }
        let reply = Reply {
            itt: cmd.itt,
            read: cmd.read,
            expected: cmd.expected_len,
        };
        let lun_exists = lun_is_zero(cmd.lun);
        // An extended CDB (AHS type 1) means a CDB over 16 bytes: none is served.
        let extended = ahs.len() >= 3 && ahs[2] == 1;
        let checked = if extended {
            Err(Failure::Check(Sense::INVALID_OPCODE))
        } else {
            Op::decode(&cmd.cdb).map_err(Failure::Check).and_then(|op| {
                if lun_exists {
                    lu.check(&op, nexus)?;
                }
                Ok(op)
            })
        };
        let op = match checked {
            Ok(op) => op,
            // Refused before any data moved; immediate data is dropped with it.
            Err(f) => {
                return self
                    .respond_failure(cmd.itt, f, Residual::default())
                    .map(|()| Next::Continue)
            }
        };
        let (cdb_out, sink) = if lun_exists {
            op.data_out(scsi::BLOCK)
        } else {
            (0, DataOut::None)
        };
        if sink == DataOut::None {
            let result = lu.execute(&op, nexus, lun_exists);
            return self.complete(reply, &lu, result).map(|()| Next::Continue);
        }
        if sink == DataOut::Buffer && cdb_out > scsi::MAX_PARAMETER_LIST {
            let f = Failure::Check(Sense::PARAMETER_LIST_LENGTH_ERROR);
            return self
                .respond_failure(cmd.itt, f, Residual::default())
                .map(|()| Next::Continue);
        }
        if self.tasks.len() >= MAX_TASKS {
            // TASK SET FULL: the initiator retries later.
            let bhs = scsi_response(cmd.itt, 0x28, Residual::default(), self.status_sn());
            self.out.send(&bhs, &[])?;
            return Ok(Next::Continue);
        }
        let task = Task {
            reply,
            lun: cmd.lun,
            op,
            sink,
            want: u32::try_from(cdb_out).map_or(cmd.expected_len, |n| n.min(cmd.expected_len)),
            cdb_len: cdb_out,
            r2ts: Vec::new(),
            // Solicited data starts after the immediate data (checked: at most the
            // expected length).
            next_r2t_offset: u32::try_from(data.len()).unwrap_or(u32::MAX),
            r2t_sn: 0,
            buffer: Vec::new(),
            failure: None,
            miscompare: None,
        };
        self.tasks.insert(cmd.itt, task);
        if !data.is_empty() {
            self.take_data(cmd.itt, &lu, 0, data);
        }
        self.progress(cmd.itt, &lu)
    }

    /// Applies a piece of a task's data at `offset` into its buffer.
    fn take_data(&mut self, itt: u32, lu: &Lu, offset: u32, data: &[u8]) {
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        if t.failure.is_some() || offset >= t.want {
            return;
        }
        let used = &data[..data.len().min((t.want - offset) as usize)];
        let offset = u64::from(offset);
        let r = match t.sink {
            DataOut::Write { offset: base } => lu.write_piece(base + offset, used),
            DataOut::Compare { offset: base } => {
                lu.compare_piece(base + offset, used).map(|first| {
                    if let (Some(i), None) = (first, t.miscompare) {
                        t.miscompare = Some(offset + i as u64);
                    }
                })
            }
            DataOut::Buffer => {
                t.buffer.extend_from_slice(used);
                Ok(())
            }
            DataOut::None => Ok(()),
        };
        if let Err(sense) = r {
            t.failure = Some(Failure::Check(sense));
        }
    }

    /// After data came: ask for the rest with R2Ts, or finish the command when
    /// everything is there.
    fn progress(&mut self, itt: u32, lu: &Lu) -> io::Result<Next> {
        let p = self.est.params;
        let Some(t) = self.tasks.get_mut(&itt) else {
            return Ok(Next::Continue);
        };
        let mut asks = Vec::new();
        while t.failure.is_none()
            && t.r2ts.len() + asks.len() < p.max_outstanding_r2t as usize
            && t.next_r2t_offset < t.want
        {
            let len = (t.want - t.next_r2t_offset).min(p.max_burst);
            asks.push((t.next_r2t_offset, len, t.r2t_sn));
            t.next_r2t_offset += len;
            t.r2t_sn += 1;
        }
        for (offset, len, r2t_sn) in asks {
            let ttt = self.ttt();
            let sn = self.peek_sn();
            let t = self.tasks.get_mut(&itt).expect("present");
            t.r2ts.push(R2t {
                ttt,
                offset,
                len,
                received: 0,
                data_sn: 0,
            });
            let bhs = r2t(t.lun, itt, ttt, sn, r2t_sn, offset, len);
            self.out.send(&bhs, &[])?;
        }
        let t = self.tasks.get(&itt).expect("present");
        let done = t.r2ts.is_empty() && (t.failure.is_some() || t.next_r2t_offset >= t.want);
        if !done {
            return Ok(Next::Continue);
        }
        let t = self.tasks.remove(&itt).expect("present");
        let residual = Residual::of(t.reply.expected, t.cdb_len);
        let result = match t.failure {
            Some(f) => Err(f),
            None => lu.finish(&t.op, &t.buffer, t.miscompare),
        };
        match result {
            Ok(d) => {
                let bhs = scsi_response(itt, d.status, residual, self.status_sn());
                self.out.send(&bhs, &[])?;
            }
            Err(f) => self.respond_failure(itt, f, residual)?,
        }
        Ok(Next::Continue)
    }

    fn data_out(&mut self, b: &Bhs, data: &[u8]) -> io::Result<Next> {
        let d = super::pdu::DataOut::parse(b);
        let Kind::Normal { lu, .. } = &self.kind else {
            self.reject(RejectReason::ProtocolError, b)?;
            return Ok(Next::Continue);
        };
        let lu = lu.clone();
        let Some(t) = self.tasks.get_mut(&d.itt) else {
            // An aborted or failed task's data, or a stranger's: dropped.
            return Ok(Next::Continue);
        };
        // Checked in 64 bits: a peer's offset plus length must not wrap.
        let end = u64::from(d.offset) + data.len() as u64;
        let Some(i) = t.r2ts.iter().position(|r| r.ttt == d.ttt) else {
            return self.bad_data_out(d.itt, "a Data-Out answers no R2T of its task");
        };
        let r = &mut t.r2ts[i];
        let r_end = u64::from(r.offset) + u64::from(r.len);
        if d.offset != r.offset + r.received || end > r_end || end > u64::from(t.reply.expected) {
            return self.bad_data_out(d.itt, "a Data-Out has the wrong buffer offset or length");
        }
        if d.data_sn != r.data_sn {
            return self.bad_data_out(d.itt, "a Data-Out has the wrong DataSN");
        }
        let complete = end == r_end;
        if d.final_bit != complete {
            return self.bad_data_out(
                d.itt,
                "a Data-Out sequence has its F bit in the wrong place",
            );
        }
        // Within the R2T's length, so it fits.
        r.received += u32::try_from(data.len()).unwrap_or(u32::MAX);
        r.data_sn += 1;
        if complete {
            t.r2ts.remove(i);
        }
        self.take_data(d.itt, &lu, d.offset, data);
        self.progress(d.itt, &lu)
    }

    /// A Data-Out that breaks its sequence: at error recovery level 0 the command fails
    /// (ABORTED COMMAND, DATA PHASE ERROR), and its later Data-Out is dropped.
    fn bad_data_out(&mut self, itt: u32, why: &str) -> io::Result<Next> {
        tracing::debug!("iSCSI: {}", crate::logtext::Escaped(why));
        if let Some(t) = self.tasks.remove(&itt) {
            let residual = Residual::of(t.reply.expected, t.cdb_len);
            let sense = Sense::new(scsi::sense::Key::AbortedCommand, 0x4b, 0x00);
            self.respond_failure(itt, Failure::Check(sense), residual)?;
        }
        Ok(Next::Continue)
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

    /// Sends the outcome of a command that took no data: its Data-In, or its status.
    fn complete(&mut self, reply: Reply, lu: &Lu, result: Result<Done, Failure>) -> io::Result<()> {
        let done = match result {
            Ok(d) => d,
            Err(f) => return self.respond_failure(reply.itt, f, Residual::default()),
        };
        let len = match &done.data {
            DataIn::None => 0,
            DataIn::Bytes(v) => v.len() as u64,
            DataIn::Disk { len, .. } => *len,
        };
        // Data goes only to an initiator that asked to read.
        let expected = if reply.read { reply.expected } else { 0 };
        let residual = Residual::of(expected, len);
        // At most what the initiator expects, so it fits its 32 bits.
        let send = u32::try_from(len).map_or(expected, |l| l.min(expected));
        if send == 0 {
            let bhs = scsi_response(reply.itt, done.status, residual, self.status_sn());
            return self.out.send(&bhs, &[]);
        }
        self.send_data_in(reply.itt, lu, &done.data, send, done.status, residual)
    }

    /// Data-In PDUs of what the initiator receives at most, a sequence per MaxBurstLength,
    /// the last one with the status (unless a read fails midway: then a SCSI Response).
    fn send_data_in(
        &mut self,
        itt: u32,
        lu: &Lu,
        data: &DataIn,
        total: u32,
        st: u8,
        residual: Residual,
    ) -> io::Result<()> {
        let p = self.est.params;
        let seg = p.initiator_max_recv_data.min(READ_PIECE);
        let burst = p.max_burst;
        let (mut sent, mut data_sn, mut in_burst) = (0u32, 0u32, 0u32);
        while sent < total {
            let n = (total - sent).min(seg).min(burst - in_burst);
            let last = sent + n == total;
            let range = sent as usize..(sent + n) as usize;
            if let DataIn::Disk { offset, .. } = data {
                self.buf.resize(n as usize, 0);
                if lu
                    .disk
                    .read_at(&mut self.buf, offset + u64::from(sent))
                    .is_err()
                {
                    let f = Failure::Check(Sense::UNRECOVERED_READ_ERROR);
                    return self.respond_failure(itt, f, Residual::of(total, u64::from(sent)));
                }
            }
            in_burst += n;
            let end_of_burst = last || in_burst == burst;
            let sn = if last {
                self.status_sn()
            } else {
                self.peek_sn()
            };
            let status = last.then_some((st, residual));
            let bhs = data_in(itt, end_of_burst, status, sn, data_sn, sent, n as usize);
            self.out.send_header(&bhs)?;
            let piece = match data {
                DataIn::Bytes(b) => &b[range],
                _ => &self.buf[..],
            };
            self.out.send_data(&[piece])?;
            sent += n;
            data_sn += 1;
            if end_of_burst {
                in_burst = 0;
            }
        }
        Ok(())
    }

    /// The session ended: a reservation it held is released.
    pub fn end(&mut self) {
        if let Kind::Normal { lu, nexus } = &self.kind {
            lu.nexus_lost(*nexus);
        }
    }
}
