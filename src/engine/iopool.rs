//! One pool of threads for requests kept in flight together, shared by every connection of
//! every protocol (iSCSI's pipeline, NBD's): on a disk whose requests wait on the network
//! (an rbd clone), a connection hands its reads and writes here and goes on reading.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock};

/// Threads of the pool: requests in flight across the room.
const POOL_THREADS: usize = 64;

pub type Job = Box<dyn FnOnce() + Send>;

fn pool() -> &'static Mutex<Sender<Job>> {
    static POOL: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..POOL_THREADS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("io-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .expect("a thread of the I/O pool");
        }
        Mutex::new(tx)
    })
}

/// Runs `job` on one of the pool's threads.
pub fn submit(job: Job) {
    let tx = pool().lock().unwrap_or_else(|p| p.into_inner());
    // The pool's threads never end, so the queue is always there.
    let _ = tx.send(job);
}
