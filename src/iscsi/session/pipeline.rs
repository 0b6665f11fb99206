//! Reads and writes kept in flight together, for a disk whose every request waits on the
//! network (an rbd clone: `Disk::parallel`). One connection serves its commands one at a
//! time; over librbd that would be one round trip to the cluster at a time. Here a READ
//! or a WRITE that carries all its data is started on the disk (librbd's asynchronous I/O:
//! no thread waits for it; a disk that cannot goes to a shared pool of threads), and the
//! session reads the next PDU meanwhile; answers go out in the order the commands came.
//!
//! What keeps the protocol as it was: only SIMPLE tasks go here (not untagged, ordered,
//! head of queue or ACA ones), never one that touches
//! blocks a task in flight writes (or a write over blocks in flight); every other PDU
//! (Data-Out, SYNCHRONIZE CACHE, task management, NOP, logout, text) first waits for
//! everything in flight and sends its answers, so it runs after them as before. Before
//! the session waits for the initiator it sends what is in flight, and when it ends it
//! waits for its requests (none outlives the connection that made it).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Reply, Session};
use crate::iscsi::pdu::*;
use crate::iscsi::scsi::{DataIn, Done, Failure, Lu, Sense};

/// Requests one session keeps in flight at most (the initiator's queue depth is usually
/// below; past it, the oldest is answered first).
pub const MAX_IN_FLIGHT: usize = 32;
/// A request's outcome: a READ's data (nothing for a WRITE), or its sense.
type Outcome = Result<Vec<u8>, Sense>;

/// What a request in flight answers with once done.
#[derive(Clone, Copy)]
enum Answer {
    /// A READ: its data, then Data-In with status.
    Read { status: u8 },
    /// A WRITE: a SCSI Response with this residual.
    Write { status: u8, residual: Residual },
}

struct InFlight {
    reply: Reply,
    lu: Arc<Lu>,
    answer: Answer,
    /// The bytes it covers, and whether it writes them.
    span: (u64, u64, bool),
    done: Receiver<Result<Vec<u8>, Sense>>,
    /// The outcome, once taken off `done`.
    outcome: Option<Result<Vec<u8>, Sense>>,
}

impl InFlight {
    /// Whether it is done, without waiting.
    fn is_done(&mut self) -> bool {
        if self.outcome.is_none() {
            self.outcome = self.done.try_recv().ok();
        }
        self.outcome.is_some()
    }

    fn wait(self) -> Result<Vec<u8>, Sense> {
        match self.outcome {
            Some(o) => o,
            None => self
                .done
                .recv()
                .unwrap_or(Err(Sense::UNRECOVERED_READ_ERROR)),
        }
    }
}

/// The session's requests in flight, oldest first, and what tells it one is done.
#[derive(Default)]
pub(super) struct Pipeline {
    queue: VecDeque<InFlight>,
    /// Readable once a request finished (made with the first request).
    done_fd: Option<Arc<EventFd>>,
}

impl Pipeline {
    /// The eventfd the pool signals when a request finishes, made on first use.
    fn signal(&mut self) -> Arc<EventFd> {
        self.done_fd
            .get_or_insert_with(|| {
                let fd = EventFd::from_value_and_flags(
                    0,
                    EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
                )
                .expect("an eventfd");
                Arc::new(fd)
            })
            .clone()
    }

    /// What becomes readable when a request in flight finishes (None while none is).
    pub(super) fn done_fd(&self) -> Option<BorrowedFd<'_>> {
        let fd = self.done_fd.as_ref().filter(|_| !self.queue.is_empty())?;
        Some(fd.as_fd())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a request over `offset..offset + len` (writing it or not) may go while
    /// the others are in flight: not when either writes blocks the other touches.
    fn clashes(&self, offset: u64, len: u64, writes: bool) -> bool {
        self.queue.iter().any(|f| {
            let (o, l, w) = f.span;
            (w || writes) && offset < o + l && o < offset + len
        })
    }

    /// Waits for every request in flight, answering nothing (the connection is gone).
    pub(super) fn abandon(&mut self) {
        for f in self.queue.drain(..) {
            let _ = f.done.recv();
        }
    }
}

/// A SIMPLE task (ATTR 1), the only kind that may run out of turn.
pub(super) fn simple(attr: u8) -> bool {
    attr == 1
}

impl<W: Write> Session<'_, W> {
    /// Sends the answers of every request in flight, oldest first.
    pub(super) fn drain(&mut self) -> io::Result<()> {
        while let Some(f) = self.pipeline.queue.pop_front() {
            self.answer(f)?;
        }
        Ok(())
    }

    /// Sends the answers of the oldest requests that are done, waiting for none.
    pub(super) fn answer_finished(&mut self) -> io::Result<()> {
        while self
            .pipeline
            .queue
            .front_mut()
            .is_some_and(InFlight::is_done)
        {
            let f = self.pipeline.queue.pop_front().expect("a front");
            self.answer(f)?;
        }
        Ok(())
    }

    fn answer(&mut self, f: InFlight) -> io::Result<()> {
        let (answer, reply, lu) = (f.answer, f.reply, f.lu.clone());
        match (answer, f.wait()) {
            (_, Err(sense)) => {
                let residual = match answer {
                    Answer::Write { residual, .. } => residual,
                    Answer::Read { .. } => Residual::default(),
                };
                self.respond_failure(reply.itt, Failure::Check(sense), residual)
            }
            (Answer::Read { status }, Ok(data)) => {
                let done = Done {
                    status,
                    data: DataIn::Bytes(data),
                };
                self.complete(reply, &lu, Ok(done))
            }
            (Answer::Write { status, residual }, Ok(_)) => {
                let bhs = scsi_response(reply.itt, status, residual, self.status_sn());
                self.out.send(&bhs, &[])
            }
        }
    }

    /// Makes room for one more request in flight (answering the oldest), or for one over
    /// these bytes (answering all when it clashes with one in flight).
    fn room_for(&mut self, offset: u64, len: u64, writes: bool) -> io::Result<()> {
        if self.pipeline.clashes(offset, len, writes) {
            return self.drain();
        }
        if self.pipeline.queue.len() >= MAX_IN_FLIGHT {
            if let Some(f) = self.pipeline.queue.pop_front() {
                self.answer(f)?;
            }
        }
        Ok(())
    }

    /// A READ of `len` bytes at `offset` (checked by the LU), answered with `status`.
    pub(super) fn read_in_flight(
        &mut self,
        reply: Reply,
        lu: &Arc<Lu>,
        (offset, len): (u64, u64),
        status: u8,
    ) -> io::Result<()> {
        // The initiator takes at most what it expects; the rest is the residual.
        let send = len.min(u64::from(reply.expected));
        self.room_for(offset, send, false)?;
        let bytes = usize::try_from(send).expect("a read fits in memory");
        let (answered, rx) = self.answer_slot();
        let done = Box::new(move |r: Result<Vec<u8>, _>| {
            answered(r.map_err(|_| Sense::UNRECOVERED_READ_ERROR));
        });
        // The disk answers by itself (librbd's asynchronous I/O), or a pool thread waits.
        if let Some(done) = lu.disk.start_read(offset, bytes, done) {
            let read = move |lu: &Lu| {
                let mut buf = vec![0u8; bytes];
                lu.disk.read_at(&mut buf, offset).map(|()| buf)
            };
            on_pool(lu, read, done);
        }
        self.queue(
            reply,
            lu,
            Answer::Read { status },
            (offset, send, false),
            rx,
        );
        Ok(())
    }

    /// Where a request's outcome goes: the closure sends it and wakes the session (its
    /// eventfd); the receiver is the request's place in the queue.
    fn answer_slot(&mut self) -> (impl FnOnce(Outcome) + Send + 'static, Receiver<Outcome>) {
        let (tx, rx) = channel();
        let signal = self.pipeline.signal();
        let answered = move |r| {
            let _ = tx.send(r);
            let _ = signal.write(1);
        };
        (answered, rx)
    }

    fn queue(
        &mut self,
        reply: Reply,
        lu: &Arc<Lu>,
        answer: Answer,
        span: (u64, u64, bool),
        done: Receiver<Outcome>,
    ) {
        self.pipeline.queue.push_back(InFlight {
            reply,
            lu: lu.clone(),
            answer,
            span,
            done,
            outcome: None,
        });
    }

    /// A WRITE whose data all came with the command: written in flight, answered with
    /// `status` and `residual`.
    pub(super) fn write_in_flight(
        &mut self,
        reply: Reply,
        lu: &Arc<Lu>,
        offset: u64,
        data: &[u8],
        (status, residual): (u8, Residual),
    ) -> io::Result<()> {
        let len = data.len() as u64;
        self.room_for(offset, len, true)?;
        let (answered, rx) = self.answer_slot();
        let done = Box::new(move |r: Result<(), _>| {
            answered(
                r.map(|()| Vec::new())
                    .map_err(crate::iscsi::scsi::write_error),
            );
        });
        if let Some((data, done)) = lu.disk.start_write(offset, data.to_vec(), done) {
            on_pool(lu, move |lu: &Lu| lu.disk.write_at(&data, offset), done);
        }
        let answer = Answer::Write { status, residual };
        self.queue(reply, lu, answer, (offset, len, true), rx);
        Ok(())
    }
}

/// Runs `work` on the shared pool, then hands its result to `then`. The LU is let go
/// in between: a reset waits for the session's answers, then must hold the disk's last
/// reference to close it. (A request the disk started itself holds no reference.)
fn on_pool<R>(
    lu: &Arc<Lu>,
    work: impl FnOnce(&Lu) -> R + Send + 'static,
    then: impl FnOnce(R) + Send + 'static,
) {
    let lu = lu.clone();
    crate::engine::iopool::submit(Box::new(move || {
        let r = work(&lu);
        drop(lu);
        then(r);
    }));
}

/// [`Session::answer_done`]; whether some are still in flight.
pub(super) fn answered<W: Write>(s: &mut Session<'_, W>) -> io::Result<bool> {
    // Reset before the answers are looked at: a request that finishes after the look
    // makes the fd readable again.
    if let Some(fd) = &s.pipeline.done_fd {
        let _ = fd.read();
    }
    s.answer_finished()?;
    Ok(!s.pipeline.is_empty())
}
