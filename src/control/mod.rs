//! The control plane: desired state (the manifest) against observed state (read from the
//! kernel) gives a plan of actions; applying runs them in order. Nothing is remembered
//! between runs except what the kernel and the files hold.

pub mod apply;
pub mod clone;
pub mod commit;
pub mod error;
pub mod export;
pub mod observe;
pub mod plan;
pub mod rbd;
pub mod reset;
pub mod spec;
pub mod status;

pub use crate::dm::{dm_name, PREFIX};
pub use error::{Error, Result};

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::kernel::Kernel;
use crate::manifest::{Image, Manifest, Pc};

/// How many PCs' resets or teardowns run side by side at most: each touches only its own
/// devices, and most of its time is the kernel waiting.
pub const SIDE_BY_SIDE: usize = 8;

/// Runs `f` on every item, up to [`SIDE_BY_SIDE`] at a time, and returns the results in the
/// items' order.
pub fn side_by_side<T: Sync, R: Send>(items: &[T], f: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|scope| {
        for _ in 0..SIDE_BY_SIDE.min(items.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(i, item);
                done.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// What every operation works with, passed in explicitly.
pub struct Ctx<'a> {
    pub manifest: &'a Manifest,
    pub kernel: &'a Kernel,
    /// Lock, vblade pid files, device nodes: /run/cowctl unless $COWCTL_RUN_DIR says.
    pub run_dir: PathBuf,
}

impl Ctx<'_> {
    pub fn image(&self, pc: &Pc) -> &Image {
        &self.manifest.images[&pc.image]
    }

    pub fn node_dir(&self) -> PathBuf {
        self.run_dir.join("dev")
    }
}

pub fn default_run_dir() -> PathBuf {
    crate::base::rundir::default_dir()
}
