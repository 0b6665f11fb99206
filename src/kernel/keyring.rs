//! The kernel's key retention service: a secret handed to a kernel driver by name, so that
//! it never sits in a line the kernel keeps and shows. `rbd device map` hands Ceph's key to
//! libceph this way (`add_key("ceph", "client.NAME", …)`, then `key=client.NAME`).

use std::ffi::CString;
use std::io;

/// Adds `payload` as a key of type `kind` named `description` to the process keyring (it
/// takes the place of one of that name there). Since Linux 3.8 that keyring hangs on the
/// calling thread's credentials: a kernel driver this same thread calls next (a sysfs
/// write) finds the key by name; another thread may not. Only root and this process see
/// it, and it goes with the thread. ENODEV means the kernel has no key type `kind` (its
/// module is not loaded), ENOSYS that it has no keyrings.
pub fn add_to_process(kind: &str, description: &str, payload: &[u8]) -> io::Result<()> {
    let text = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (kind, description) = (text(kind)?, text(description)?);
    // SAFETY: both strings are NUL-terminated and live across the call; the kernel copies
    // `payload`, whose pointer and length come from one slice.
    let serial = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            description.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            libc::c_long::from(libc::KEY_SPEC_PROCESS_KEYRING),
        )
    };
    if serial < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::add_to_process;

    #[test]
    fn a_name_with_a_nul_is_refused_before_the_kernel() {
        let err = add_to_process("user", "a\0b", b"x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
