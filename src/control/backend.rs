//! Which backend serves the manifest: the kernel (loop + dm-snapshot + LIO/vblade) or the
//! userspace engine behind `cowctl serve`.

use std::path::Path;

use crate::manifest::{Backend, Manifest};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Kernel,
    Userspace,
}

/// `backend: auto` (the default) picks the kernel when it has device-mapper: its control
/// node exists, or appears once `dm-snapshot` is loaded.
pub fn resolve(m: &Manifest) -> Resolved {
    match m.backend {
        Backend::Kernel => Resolved::Kernel,
        Backend::Userspace => Resolved::Userspace,
        Backend::Auto if kernel_has_dm() => Resolved::Kernel,
        Backend::Auto => Resolved::Userspace,
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
