//! The control plane: desired state (the manifest) against observed state (read from the
//! kernel) gives a plan of actions; applying runs them in order. Nothing is remembered
//! between runs except what the kernel and the files hold.

pub mod apply;
pub mod backend;
pub mod lock;
pub mod observe;
pub mod plan;
pub mod reset;
pub mod sidecar;
pub mod status;

use std::path::{Path, PathBuf};

use crate::kernel::Kernel;
use crate::manifest::{Image, Manifest, Pc};

/// How many PCs' resets or teardowns run side by side at most: each touches only its own
/// devices, and most of its time is the kernel waiting.
pub const SIDE_BY_SIDE: usize = 8;

/// Every dm device and LIO storage object cowctl makes carries this prefix.
pub const PREFIX: &str = "cowctl-";

pub fn dm_name(pc: &str) -> String {
    format!("{PREFIX}{pc}")
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
    std::env::var_os("COWCTL_RUN_DIR")
        .map_or_else(|| Path::new("/run/cowctl").to_path_buf(), PathBuf::from)
}
