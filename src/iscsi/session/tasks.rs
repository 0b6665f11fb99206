//! Tasks waiting for their data: R2Ts asked, Data-Out checked against them and applied,
//! the command finished when all is there; task management aborts them.

use std::io::{self, Write};

use super::{lun_is_zero, Kind, Next, R2t, Session};
use crate::iscsi::pdu::*;
use crate::iscsi::scsi::{self, DataOut, Failure, Lu, Sense};

impl<'a, W: Write> Session<'a, W> {
    pub(super) fn task_management(&mut self, b: &Bhs) -> io::Result<Next> {
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

    /// Applies a piece of a task's data at `offset` into its buffer.
    pub(super) fn take_data(&mut self, itt: u32, lu: &Lu, offset: u32, data: &[u8]) {
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
    pub(super) fn progress(&mut self, itt: u32, lu: &Lu) -> io::Result<Next> {
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

    pub(super) fn data_out(&mut self, b: &Bhs, data: &[u8]) -> io::Result<Next> {
        let d = crate::iscsi::pdu::DataOut::parse(b);
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
        tracing::debug!("iSCSI: {}", crate::base::logtext::Escaped(why));
        if let Some(t) = self.tasks.remove(&itt) {
            let residual = Residual::of(t.reply.expected, t.cdb_len);
            let sense = Sense::new(scsi::sense::Key::AbortedCommand, 0x4b, 0x00);
            self.respond_failure(itt, Failure::Check(sense), residual)?;
        }
        Ok(Next::Continue)
    }
}
