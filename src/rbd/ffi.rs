//! The librados and librbd calls cowctl makes, loaded at run time (`dlopen`), so the binary
//! and its package need Ceph's libraries only on a server that serves `storage: rbd`.
//! Each signature is copied from Debian 12's `rados/librados.h` and `rbd/librbd.h` (Ceph 16).

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

pub type Rados = *mut c_void;
pub type IoCtx = *mut c_void;
pub type RbdImage = *mut c_void;
pub type ImageOptions = *mut c_void;
pub type DiffCallback = extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;
pub type Completion = *mut c_void;
pub type CompletionCallback = extern "C" fn(Completion, *mut c_void);

pub const LOCK_MODE_EXCLUSIVE: c_int = 0;
pub const IMAGE_OPTION_ORDER: c_int = 2;
pub const IMAGE_OPTION_STRIPE_UNIT: c_int = 3;
pub const IMAGE_OPTION_STRIPE_COUNT: c_int = 4;
pub const IMAGE_OPTION_FEATURES_SET: c_int = 8;
/// `RBD_FEATURE_LAYERING`: clones can be made of its snapshots.
pub const FEATURE_LAYERING: u64 = 1;
/// `RBD_FEATURE_EXCLUSIVE_LOCK`.
pub const FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// `RBD_FEATURE_OBJECT_MAP`: which objects exist, kept by the lock holder.
pub const FEATURE_OBJECT_MAP: u64 = 1 << 3;
/// `RBD_FEATURE_FAST_DIFF`: `rbd du` and diffs from the object map alone.
pub const FEATURE_FAST_DIFF: u64 = 1 << 4;
/// `RBD_FEATURE_DEEP_FLATTEN`: a flatten frees the image's snapshots from the parent too.
pub const FEATURE_DEEP_FLATTEN: u64 = 1 << 5;
/// `RBD_MAX_BLOCK_NAME_SIZE` and `RBD_MAX_IMAGE_NAME_SIZE`.
const BLOCK_NAME_SIZE: usize = 24;
const IMAGE_NAME_SIZE: usize = 96;

#[repr(C)]
pub struct ImageInfo {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; BLOCK_NAME_SIZE],
    pub parent_pool: i64,
    pub parent_name: [c_char; IMAGE_NAME_SIZE],
}

#[repr(C)]
pub struct ImageSpec {
    pub id: *mut c_char,
    pub name: *mut c_char,
}

#[repr(C)]
pub struct LinkedImageSpec {
    pub pool_id: i64,
    pub pool_name: *mut c_char,
    pub pool_namespace: *mut c_char,
    pub image_id: *mut c_char,
    pub image_name: *mut c_char,
    pub trash: bool,
}

#[repr(C)]
pub struct SnapSpec {
    pub id: u64,
    pub namespace_type: c_int,
    pub name: *mut c_char,
}

macro_rules! calls {
    ($($lib:ident $name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// Every call, resolved once; the libraries stay loaded for the process's life.
        pub struct Calls {
            $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        fn resolve(libs: &Libraries) -> Result<Calls, String> {
            // SAFETY: each symbol is given the type its header declares.
            unsafe {
                Ok(Calls {
                    $($name: *libs.$lib
                        .get(concat!(stringify!($name), "\0").as_bytes())
                        .map_err(|e| format!("{}: {e}", stringify!($name)))?,)*
                })
            }
        }
    };
}

calls! {
    rados rados_create2: fn(*mut Rados, *const c_char, *const c_char, u64) -> c_int;
    rados rados_conf_read_file: fn(Rados, *const c_char) -> c_int;
    rados rados_conf_set: fn(Rados, *const c_char, *const c_char) -> c_int;
    rados rados_conf_get: fn(Rados, *const c_char, *mut c_char, usize) -> c_int;
    rados rados_connect: fn(Rados) -> c_int;
    rados rados_shutdown: fn(Rados);
    rados rados_ioctx_create: fn(Rados, *const c_char, *mut IoCtx) -> c_int;
    rados rados_ioctx_destroy: fn(IoCtx);
    rados rados_mon_command: fn(Rados, *const *const c_char, usize, *const c_char, usize, *mut *mut c_char, *mut usize, *mut *mut c_char, *mut usize) -> c_int;
    rados rados_buffer_free: fn(*mut c_char);
    rados rados_get_instance_id: fn(Rados) -> u64;
    rados rados_lock_exclusive: fn(IoCtx, *const c_char, *const c_char, *const c_char, *const c_char, *mut libc::timeval, u8) -> c_int;
    rados rados_unlock: fn(IoCtx, *const c_char, *const c_char, *const c_char) -> c_int;
    rados rados_break_lock: fn(IoCtx, *const c_char, *const c_char, *const c_char, *const c_char) -> c_int;
    rados rados_list_lockers: fn(IoCtx, *const c_char, *const c_char, *mut c_int, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize) -> isize;
    rbd rbd_open: fn(IoCtx, *const c_char, *mut RbdImage, *const c_char) -> c_int;
    rbd rbd_open_read_only: fn(IoCtx, *const c_char, *mut RbdImage, *const c_char) -> c_int;
    rbd rbd_close: fn(RbdImage) -> c_int;
    rbd rbd_stat: fn(RbdImage, *mut ImageInfo, usize) -> c_int;
    rbd rbd_get_id: fn(RbdImage, *mut c_char, usize) -> c_int;
    rbd rbd_read2: fn(RbdImage, u64, usize, *mut c_char, c_int) -> isize;
    rbd rbd_write2: fn(RbdImage, u64, usize, *const c_char, c_int) -> isize;
    rbd rbd_discard: fn(RbdImage, u64, u64) -> c_int;
    rbd rbd_write_zeroes: fn(RbdImage, u64, usize, c_int, c_int) -> isize;
    rbd rbd_flush: fn(RbdImage) -> c_int;
    rbd rbd_aio_create_completion: fn(*mut c_void, CompletionCallback, *mut Completion) -> c_int;
    rbd rbd_aio_read2: fn(RbdImage, u64, usize, *mut c_char, Completion, c_int) -> c_int;
    rbd rbd_aio_write2: fn(RbdImage, u64, usize, *const c_char, Completion, c_int) -> c_int;
    rbd rbd_aio_get_return_value: fn(Completion) -> isize;
    rbd rbd_aio_release: fn(Completion);
    rbd rbd_diff_iterate2: fn(RbdImage, *const c_char, u64, u64, u8, u8, DiffCallback, *mut c_void) -> c_int;
    rbd rbd_image_options_create: fn(*mut ImageOptions);
    rbd rbd_image_options_destroy: fn(ImageOptions);
    rbd rbd_image_options_set_uint64: fn(ImageOptions, c_int, u64) -> c_int;
    rbd rbd_create4: fn(IoCtx, *const c_char, u64, ImageOptions) -> c_int;
    rbd rbd_clone3: fn(IoCtx, *const c_char, *const c_char, IoCtx, *const c_char, ImageOptions) -> c_int;
    rbd rbd_remove: fn(IoCtx, *const c_char) -> c_int;
    rbd rbd_rename: fn(IoCtx, *const c_char, *const c_char) -> c_int;
    rbd rbd_snap_create: fn(RbdImage, *const c_char) -> c_int;
    rbd rbd_snap_protect: fn(RbdImage, *const c_char) -> c_int;
    rbd rbd_snap_is_protected: fn(RbdImage, *const c_char, *mut c_int) -> c_int;
    rbd rbd_snap_exists: fn(RbdImage, *const c_char, *mut bool) -> c_int;
    rbd rbd_get_parent: fn(RbdImage, *mut LinkedImageSpec, *mut SnapSpec) -> c_int;
    rbd rbd_linked_image_spec_cleanup: fn(*mut LinkedImageSpec);
    rbd rbd_snap_spec_cleanup: fn(*mut SnapSpec);
    rbd rbd_lock_acquire: fn(RbdImage, c_int) -> c_int;
    rbd rbd_lock_get_owners: fn(RbdImage, *mut c_int, *mut *mut c_char, *mut usize) -> c_int;
    rbd rbd_lock_get_owners_cleanup: fn(*mut *mut c_char, usize);
    rbd rbd_lock_break: fn(RbdImage, c_int, *const c_char) -> c_int;
    rbd rbd_metadata_get: fn(RbdImage, *const c_char, *mut c_char, *mut usize) -> c_int;
    rbd rbd_metadata_set: fn(RbdImage, *const c_char, *const c_char) -> c_int;
    rbd rbd_metadata_remove: fn(RbdImage, *const c_char) -> c_int;
    rbd rbd_snap_unprotect: fn(RbdImage, *const c_char) -> c_int;
    rbd rbd_snap_remove: fn(RbdImage, *const c_char) -> c_int;
    rbd rbd_list2: fn(IoCtx, *mut ImageSpec, *mut usize) -> c_int;
    rbd rbd_image_spec_list_cleanup: fn(*mut ImageSpec, usize);
    rbd rbd_list_children3: fn(RbdImage, *mut LinkedImageSpec, *mut usize) -> c_int;
    rbd rbd_linked_image_spec_list_cleanup: fn(*mut LinkedImageSpec, usize);
    rbd rbd_pool_metadata_get: fn(IoCtx, *const c_char, *mut c_char, *mut usize) -> c_int;
    rbd rbd_pool_metadata_set: fn(IoCtx, *const c_char, *const c_char) -> c_int;
}

struct Libraries {
    rados: libloading::Library,
    rbd: libloading::Library,
}

/// librados.so.2 and librbd.so.1, the sonames Debian's librados2 and librbd1 ship.
const RADOS: &str = "librados.so.2";
const RBD: &str = "librbd.so.1";

/// The calls, loaded on first use; the error names the library that is missing.
pub fn calls() -> Result<&'static Calls, String> {
    static CALLS: OnceLock<Result<Calls, String>> = OnceLock::new();
    CALLS
        .get_or_init(|| {
            // SAFETY: loading Ceph's client libraries runs their initialisers, which only
            // set up their own state.
            let open = |name: &str| unsafe {
                libloading::Library::new(name).map_err(|e| format!("{name}: {e}"))
            };
            let libs = Libraries {
                rados: open(RADOS)?,
                rbd: open(RBD)?,
            };
            let calls = resolve(&libs)?;
            // The function pointers above live as long as the libraries: keep them loaded.
            std::mem::forget(libs);
            Ok(calls)
        })
        .as_ref()
        .map_err(Clone::clone)
}
