//! A SCSI Command PDU: checked (window, immediate data, task tag, CDB) and run, or made a
//! task that waits for its Data-Out; the outcome sent as Data-In with status, or a SCSI
//! Response.

use std::io::{self, Write};

use super::{lun_is_zero, pipeline, Kind, Next, Reply, Session, Task, MAX_TASKS, READ_PIECE};
use crate::iscsi::pdu::*;
use crate::iscsi::scsi::{self, status, DataIn, DataOut, Done, Failure, Lu, Nexus, Op, Sense};

impl<'a, W: Write> Session<'a, W> {
    pub(super) fn scsi_command(&mut self, b: &Bhs, ahs: &[u8], data: &[u8]) -> io::Result<Next> {
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
        if !self.immediate_data_ok(&cmd, data) || !cmd.final_bit {
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
        let op = match checked_op(&lu, nexus, &cmd, ahs, lun_exists) {
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
        let in_flight = lun_exists && lu.disk.parallel() && pipeline::simple(cmd.attr);
        let read = in_flight && matches!(op, Op::Read { .. });
        // A WRITE that brought all its data is written in flight.
        let write = match (in_flight, op, sink) {
            (true, Op::Write { fua: false, .. }, DataOut::Write { offset }) => {
                let whole = !data.is_empty()
                    && data.len() as u64 == cdb_out
                    && cdb_out <= u64::from(cmd.expected_len);
                whole.then_some(offset)
            }
            _ => None,
        };
        if !read && write.is_none() {
            self.drain()?;
        }
        if sink == DataOut::None {
            let result = lu.execute(&op, nexus, lun_exists);
            if let (
                true,
                Ok(Done {
                    status,
                    data: DataIn::Disk { offset, len },
                }),
            ) = (read, &result)
            {
                // One that asks for more than the initiator expects keeps its residual the
                // usual way.
                if reply.read && reply.expected > 0 && *len <= u64::from(reply.expected) {
                    self.read_in_flight(reply, &lu, (*offset, *len), *status)?;
                    return Ok(Next::Continue);
                }
            }
            self.drain()?;
            return self.complete(reply, &lu, result).map(|()| Next::Continue);
        }
        if let Some(offset) = write {
            let residual = Residual::of(reply.expected, cdb_out);
            self.write_in_flight(reply, &lu, offset, data, (status::GOOD, residual))?;
            return Ok(Next::Continue);
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
        let task = new_task(&cmd, reply, op, sink, cdb_out, data.len());
        self.tasks.insert(cmd.itt, task);
        if !data.is_empty() {
            self.take_data(cmd.itt, &lu, 0, data);
        }
        self.progress(cmd.itt, &lu)
    }

    /// Immediate data: only when negotiated, within the first burst and what was expected;
    /// no unsolicited Data-Out (InitialR2T=Yes), so F is always set.
    fn immediate_data_ok(&self, cmd: &ScsiCommand, data: &[u8]) -> bool {
        let p = self.est.params;
        data.is_empty()
            || (p.immediate_data
                && cmd.write
                && data.len() as u64 <= u64::from(p.first_burst)
                && data.len() as u64 <= u64::from(cmd.expected_len))
    }

    /// Sends the outcome of a command that took no data: its Data-In, or its status.
    pub(super) fn complete(
        &mut self,
        reply: Reply,
        lu: &Lu,
        result: Result<Done, Failure>,
    ) -> io::Result<()> {
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
}

/// The command's operation: an extended CDB (AHS type 1, a CDB over 16 bytes) is not
/// served; the CDB decoded, and on LUN 0 checked against the LU before any data moves.
fn checked_op(
    lu: &Lu,
    nexus: Nexus,
    cmd: &ScsiCommand,
    ahs: &[u8],
    lun_exists: bool,
) -> Result<Op, Failure> {
    let extended = ahs.len() >= 3 && ahs[2] == 1;
    if extended {
        Err(Failure::Check(Sense::INVALID_OPCODE))
    } else {
        Op::decode(&cmd.cdb).map_err(Failure::Check).and_then(|op| {
            if lun_exists {
                lu.check(&op, nexus)?;
            }
            Ok(op)
        })
    }
}

/// A command waiting for its Data-Out; `immediate` bytes of it came with the command.
fn new_task(
    cmd: &ScsiCommand,
    reply: Reply,
    op: Op,
    sink: DataOut,
    cdb_out: u64,
    immediate: usize,
) -> Task {
    Task {
        reply,
        lun: cmd.lun,
        op,
        sink,
        want: u32::try_from(cdb_out).map_or(cmd.expected_len, |n| n.min(cmd.expected_len)),
        cdb_len: cdb_out,
        r2ts: Vec::new(),
        // Solicited data starts after the immediate data (checked: at most the expected
        // length).
        next_r2t_offset: u32::try_from(immediate).unwrap_or(u32::MAX),
        r2t_sn: 0,
        buffer: Vec::new(),
        failure: None,
        miscompare: None,
    }
}
