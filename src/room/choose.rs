//! Which backend serves the manifest: the kernel (loop + dm-snapshot + LIO/vblade) or the
//! userspace engine behind `cowctl serve`.

use std::path::Path;

use crate::manifest::{Backend, Manifest};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Kernel,
    Userspace,
}

/// `backend: auto` (the default) picks the kernel when it has device-mapper: its control
/// node exists, or appears once `dm-snapshot` is loaded. A room with rbd images is served
/// by `cowctl serve` unless it asks for the kernel (which maps the clones with its rbd
/// driver): the userspace gateways take each other's PCs over, the kernel does not.
pub fn choose(m: &Manifest) -> BackendKind {
    match m.backend {
        Backend::Kernel => BackendKind::Kernel,
        Backend::Userspace => BackendKind::Userspace,
        Backend::Auto if m.uses_rbd() => BackendKind::Userspace,
        Backend::Auto if kernel_has_dm() => BackendKind::Kernel,
        Backend::Auto => BackendKind::Userspace,
    }
}

fn kernel_has_dm() -> bool {
    let control = Path::new("/dev/mapper/control");
    if control.exists() {
        return true;
    }
    crate::kernel::modprobe("dm-snapshot");
    control.exists()
}
