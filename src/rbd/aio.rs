//! Reads and writes through librbd's asynchronous I/O: the request goes to the cluster and
//! the calling thread goes on; `done` runs on librbd's own thread once the cluster has
//! answered (a write: once it is durable there, the client has no cache). `done` must be
//! quick and must not call into librbd: librbd runs it on the thread that finishes its
//! other requests too. It sends a message and wakes a connection, nothing more.

use std::ffi::c_void;
use std::ptr;

use super::ffi::{Calls, Completion};
use super::{check, Image, Result};

pub type ReadDone = Box<dyn FnOnce(Result<Vec<u8>>) + Send>;
pub type WriteDone = Box<dyn FnOnce(Result<()>) + Send>;

enum Done {
    Read(Vec<u8>, ReadDone),
    Write(Vec<u8>, WriteDone),
}

/// One request in flight: its buffer (which librbd reads or fills until it completes),
/// what to call, and what to name in an error.
struct Request {
    calls: &'static Calls,
    done: Done,
    what: std::sync::Arc<str>,
    offset: u64,
}

impl Request {
    fn finish(self, ret: i64) {
        let Request {
            done, what, offset, ..
        } = self;
        let failed = |op| check(ret, op, || format!("{what} at byte {offset}"));
        // A panic must not unwind into librbd's C frames (that aborts the process).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match done {
            Done::Read(mut buf, done) => done(failed("read").map(|n| {
                // Past the end of the image reads as zeros (the caller checked the range).
                let n = usize::try_from(n).unwrap_or(buf.len()).min(buf.len());
                buf[n..].fill(0);
                buf
            })),
            Done::Write(_, done) => done(failed("write").map(drop)),
        }));
    }
}

extern "C" fn complete(c: Completion, arg: *mut c_void) {
    // SAFETY: `arg` is the request leaked by `submit`, handed back exactly once, here.
    let request = unsafe { Box::from_raw(arg.cast::<Request>()) };
    // SAFETY: a completion librbd has finished with; released once.
    let ret = unsafe { (request.calls.rbd_aio_get_return_value)(c) };
    unsafe { (request.calls.rbd_aio_release)(c) };
    request.finish(ret as i64);
}

impl Image {
    /// Reads `len` bytes at `offset` (inside the image: the caller checks); `done` gets them.
    pub fn aio_read(&self, offset: u64, len: usize, done: ReadDone) {
        self.submit(offset, Done::Read(vec![0; len], done));
    }

    /// Writes `data` at `offset`; `done` hears when the cluster has it.
    pub fn aio_write(&self, offset: u64, data: Vec<u8>, done: WriteDone) {
        self.submit(offset, Done::Write(data, done));
    }

    fn submit(&self, offset: u64, done: Done) {
        let calls = self.pool.calls();
        let mut request = Box::new(Request {
            calls,
            done,
            what: self.spec.clone(),
            offset,
        });
        let (buf, len) = match &mut request.done {
            Done::Read(b, _) | Done::Write(b, _) => (b.as_mut_ptr(), b.len()),
        };
        let is_read = matches!(request.done, Done::Read(..));
        let arg = Box::into_raw(request);
        let mut c: Completion = ptr::null_mut();
        // SAFETY: `arg` lives until `complete` takes it back; `c` is an out-pointer.
        let made = unsafe { (calls.rbd_aio_create_completion)(arg.cast(), complete, &mut c) };
        if made < 0 {
            // SAFETY: not handed to librbd: still ours.
            return unsafe { Box::from_raw(arg) }.finish(made.into());
        }
        // SAFETY: a live handle; `buf` (owned by the request, on the heap) stays put
        // until the completion runs; `c` is released by `complete`.
        let ret = unsafe {
            if is_read {
                (calls.rbd_aio_read2)(self.handle, offset, len, buf.cast(), c, 0)
            } else {
                (calls.rbd_aio_write2)(self.handle, offset, len, buf.cast(), c, 0)
            }
        };
        if ret < 0 {
            // Refused before it started: librbd will not complete it.
            // SAFETY: as above, never completed, so still ours.
            unsafe { (calls.rbd_aio_release)(c) };
            unsafe { Box::from_raw(arg) }.finish(ret.into());
        }
    }
}
