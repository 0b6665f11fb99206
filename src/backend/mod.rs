//! The one seam between the commands and what serves the disks. A [`Backend`] plans,
//! applies, takes down, reports, resets and commits a room; the CLI loads the manifest,
//! calls [`pick`] once, calls the backend and prints what it returns. Today there are two:
//! the kernel (loop + dm-snapshot, exported by LIO or vblade; [`kernel`]) and cowctl's own
//! engine behind `cowctl serve` ([`userspace`], a client of its control socket that starts
//! the service when it is not running). A new backend is one more implementation of this
//! trait and one more arm in [`pick`].

pub mod error;
pub mod kernel;
pub mod userspace;

pub use error::{Error, Result};

use crate::image::{Committed, VersionName};
use crate::manifest::{Manifest, Pc};
use crate::room::choose::{choose, BackendKind};
use crate::room::reset::Reset;
use crate::room::status::PcStatus;
pub use crate::room::step::Step;

/// What a backend tells as it works: a note for the admin (a service started), or one
/// step of a plan, the `index`th (from 0) of `of`. A backend that runs its steps itself
/// tells each as it starts; one that asks a service tells them once it has answered.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    Note(&'a str),
    Step {
        index: usize,
        of: usize,
        step: &'a Step,
    },
}

/// Hears of each step; `Send` because a backend may run PCs' steps side by side.
pub type Listener<'a> = dyn FnMut(Progress<'_>) + Send + 'a;

/// What `apply` did: the steps in order, and the room's status afterwards when the backend
/// got it with the apply (a service answers with it); None: ask `status` if it is wanted.
#[derive(Debug, Default)]
pub struct Applied {
    pub steps: Vec<Step>,
    pub status: Option<Vec<PcStatus>>,
}

/// What `reset` did: the PCs reset, and those that failed with why (the others are done).
#[derive(Debug, Default)]
pub struct Resets {
    pub done: Vec<Reset>,
    pub failed: Vec<(String, Error)>,
}

/// How a backend's results read to the admin.
#[derive(Debug, Clone, Copy)]
pub struct Words {
    /// What an empty plan means: "the kernel already matches the manifest".
    pub matches: &'static str,
    /// What an empty `down` means: "none of these PCs is applied".
    pub none_up: &'static str,
    /// What a live reset's clients saw.
    pub clients_saw: &'static str,
}

pub trait Backend {
    fn words(&self) -> Words;

    /// How resets of several PCs are paced, for the line that ends them.
    fn reset_pace(&self) -> String;

    /// The steps `apply` would take, in order; nothing is changed.
    fn plan(&self, m: &Manifest) -> Result<Vec<Step>>;

    /// Makes what is served match the manifest.
    fn apply(&self, m: &Manifest, progress: &mut Listener<'_>) -> Result<Applied>;

    /// Stops serving these PCs (every PC when none are named); COW files stay. Returns the
    /// steps taken.
    fn down(&self, m: &Manifest, pcs: &[String], progress: &mut Listener<'_>) -> Result<Vec<Step>>;

    /// Each named PC's state and fill (every PC when none are named), in manifest order.
    fn status(&self, m: &Manifest, pcs: &[String]) -> Result<Vec<PcStatus>>;

    /// Returns these PCs to their image (the version each is due to move to), also while
    /// they are served and in use.
    fn reset(&self, m: &Manifest, pcs: &[&Pc]) -> Result<Resets>;

    /// Makes a new version of `pc`'s image from its disk; `pause` stops its I/O meanwhile
    /// instead of refusing a PC that is in use.
    fn commit(
        &self,
        m: &Manifest,
        pc: &Pc,
        version: Option<VersionName>,
        note: &str,
        pause: bool,
    ) -> Result<Committed>;

    /// `cowctl serve` in the foreground, as this backend needs it.
    fn serve(&self, m: &Manifest, start_empty: bool) -> Result<()>;
}

/// The backend that serves this manifest (`backend:`; `auto` is the kernel where it has
/// device-mapper).
pub fn pick(m: &Manifest) -> Box<dyn Backend> {
    match choose(m) {
        BackendKind::Kernel => Box::new(kernel::KernelBackend::real()),
        BackendKind::Userspace => Box::new(userspace::ServiceClient::new()),
    }
}
