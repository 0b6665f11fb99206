//! One RBD image opened for I/O: reads, writes, flush, discard, its objects, its parent,
//! its exclusive lock and its snapshots.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::{Arc, Mutex};

use super::ffi::{self, RbdImage};
use super::{check, cstr, Pool, Result};

pub struct Image {
    pub(super) pool: Arc<Pool>,
    pub(super) handle: RbdImage,
    name: String,
    /// `pool/name`, made once: what errors name, shared with requests in flight.
    pub(super) spec: Arc<str>,
}

// SAFETY: librbd's image handles take concurrent I/O from many threads (they are what
// qemu and tgt share between their workers).
unsafe impl Send for Image {}
unsafe impl Sync for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: opened by Image::open, closed once.
        unsafe { (self.pool.calls().rbd_close)(self.handle) };
    }
}

/// Where a clone comes from: `pool/image@snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub pool: String,
    pub image: String,
    pub snap: String,
}

impl std::fmt::Display for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.pool, self.image, self.snap)
    }
}

fn owned(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string librbd filled in.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Image {
    pub(super) fn open(
        pool: &Arc<Pool>,
        name: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> Result<Image> {
        let n = cstr(name, "the image name")?;
        let s = snap.map(|s| cstr(s, "the snapshot name")).transpose()?;
        let snap_ptr = s.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut handle: RbdImage = ptr::null_mut();
        let calls = pool.calls();
        let open = if read_only {
            calls.rbd_open_read_only
        } else {
            calls.rbd_open
        };
        // SAFETY: a live ioctx, C strings, an out-pointer.
        let ret = unsafe { open(pool.io, n.as_ptr(), &mut handle, snap_ptr) };
        check(ret.into(), "open", || pool.spec(name))?;
        Ok(Image {
            pool: pool.clone(),
            handle,
            name: name.to_string(),
            spec: pool.spec(name).into(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn what(&self) -> String {
        self.spec.to_string()
    }

    fn stat(&self) -> Result<ffi::ImageInfo> {
        // SAFETY: all-zero is a valid ImageInfo (integers and arrays).
        let mut info: ffi::ImageInfo = unsafe { std::mem::zeroed() };
        // SAFETY: a live handle and a buffer of the size passed.
        let ret = unsafe {
            (self.pool.calls().rbd_stat)(
                self.handle,
                &mut info,
                std::mem::size_of::<ffi::ImageInfo>(),
            )
        };
        check(ret.into(), "stat", || self.what())?;
        Ok(info)
    }

    pub fn size(&self) -> Result<u64> {
        Ok(self.stat()?.size)
    }

    /// The size of its objects: a first write into a clone copies up a whole one.
    pub fn object_size(&self) -> Result<u64> {
        Ok(self.stat()?.obj_size)
    }

    /// Reads `buf.len()` bytes at `offset` (inside the image: the caller checks).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: a live handle writing into `rest`, of the length passed.
            let n = unsafe {
                (self.pool.calls().rbd_read2)(
                    self.handle,
                    offset + done as u64,
                    rest.len(),
                    rest.as_mut_ptr().cast(),
                    0,
                )
            };
            let n = check(n as i64, "read", || {
                format!("{} at byte {}", self.what(), offset + done as u64)
            })?;
            if n == 0 {
                // Past the end: what is not there reads as zeros.
                rest.fill(0);
                break;
            }
            done += usize::try_from(n).unwrap_or(rest.len());
        }
        Ok(())
    }

    /// Writes `buf` at `offset`; done when the cluster has it (the client has no cache).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &buf[done..];
            // SAFETY: a live handle reading `rest`, of the length passed.
            let n = unsafe {
                (self.pool.calls().rbd_write2)(
                    self.handle,
                    offset + done as u64,
                    rest.len(),
                    rest.as_ptr().cast(),
                    0,
                )
            };
            let n = check(n as i64, "write", || {
                format!("{} at byte {}", self.what(), offset + done as u64)
            })?;
            if n == 0 {
                return check(-i64::from(libc::EIO), "write", || {
                    format!("{} at byte {offset}: nothing written", self.what())
                })
                .map(drop);
            }
            done += usize::try_from(n).unwrap_or(rest.len());
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        // SAFETY: a live handle.
        let ret = unsafe { (self.pool.calls().rbd_flush)(self.handle) };
        check(ret.into(), "flush", || self.what()).map(drop)
    }

    /// Discards a range: afterwards it reads as zeros (a clone's hides its parent's bytes).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // SAFETY: a live handle.
        let ret = unsafe { (self.pool.calls().rbd_discard)(self.handle, offset, len) };
        check(ret.into(), "discard", || {
            format!("{} at byte {offset}", self.what())
        })
        .map(drop)
    }

    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        // SAFETY: a live handle.
        let ret = unsafe { (self.pool.calls().rbd_write_zeroes)(self.handle, offset, len, 0, 0) };
        check(ret as i64, "write zeroes", || {
            format!("{} at byte {offset}", self.what())
        })
        .map(drop)
    }

    /// The objects the image has of its own (a clone's: those written since it was made),
    /// as `(offset, length)`: `rbd du`'s count, by the same walk (whole objects, the
    /// object map's answer when the image has one).
    pub fn own_objects(&self) -> Result<Vec<(u64, u64)>> {
        extern "C" fn note(offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the Mutex passed below, alive for the call; librbd may call
            // from its own threads, so the Vec is behind the lock.
            let out = unsafe { &*arg.cast::<Mutex<Vec<(u64, u64)>>>() };
            if exists != 0 {
                out.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((offset, len as u64));
            }
            0
        }
        let size = self.size()?;
        let out: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
        // SAFETY: a live handle; the callback only touches `out`.
        let ret = unsafe {
            (self.pool.calls().rbd_diff_iterate2)(
                self.handle,
                ptr::null(),
                0,
                size,
                0,
                1,
                note,
                std::ptr::addr_of!(out).cast_mut().cast(),
            )
        };
        check(ret.into(), "list the objects of", || self.what())?;
        Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// The snapshot this clone was made from; `None` for an image that is no clone.
    pub fn parent(&self) -> Result<Option<Parent>> {
        // SAFETY: all-zero specs are what librbd fills in (pointers null until set).
        let (mut image, mut snap): (ffi::LinkedImageSpec, ffi::SnapSpec) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        let calls = self.pool.calls();
        // SAFETY: a live handle and out-structs, cleaned up below on success.
        let ret = unsafe { (calls.rbd_get_parent)(self.handle, &mut image, &mut snap) };
        if ret == -libc::ENOENT {
            return Ok(None);
        }
        check(ret.into(), "read the parent of", || self.what())?;
        let parent = Parent {
            pool: owned(image.pool_name),
            image: owned(image.image_name),
            snap: owned(snap.name),
        };
        // SAFETY: filled in by rbd_get_parent.
        unsafe {
            (calls.rbd_linked_image_spec_cleanup)(&mut image);
            (calls.rbd_snap_spec_cleanup)(&mut snap);
        }
        Ok(Some(parent))
    }

    /// Takes the image's exclusive lock and keeps it until released or closed: no other
    /// client can write the image meanwhile (theirs fail with EROFS), and librbd does not
    /// hand the lock over when another client asks for it.
    pub fn lock_exclusive(&self) -> Result<()> {
        // SAFETY: a live handle.
        let ret =
            unsafe { (self.pool.calls().rbd_lock_acquire)(self.handle, ffi::LOCK_MODE_EXCLUSIVE) };
        check(ret.into(), "take the exclusive lock of", || self.what()).map(drop)
    }

    /// Who holds the exclusive lock (the holders' client addresses); empty when nobody does.
    pub fn lock_owners(&self) -> Result<Vec<String>> {
        let calls = self.pool.calls();
        let mut owners: [*mut c_char; 8] = [ptr::null_mut(); 8];
        let mut count = owners.len();
        let mut mode: c_int = 0;
        // SAFETY: a live handle, an array of `count` pointers.
        let ret = unsafe {
            (calls.rbd_lock_get_owners)(self.handle, &mut mode, owners.as_mut_ptr(), &mut count)
        };
        if ret == -libc::ENOENT {
            return Ok(Vec::new());
        }
        check(ret.into(), "read the lock owners of", || self.what())?;
        let names = owners[..count.min(owners.len())]
            .iter()
            .map(|p| owned(*p))
            .collect();
        // SAFETY: filled in by rbd_lock_get_owners.
        unsafe { (calls.rbd_lock_get_owners_cleanup)(owners.as_mut_ptr(), count) };
        Ok(names)
    }

    /// Breaks `owner`'s exclusive lock (a dead gateway's: the cluster blocklists it first).
    pub fn break_lock(&self, owner: &str) -> Result<()> {
        let o = cstr(owner, "the lock owner")?;
        // SAFETY: a live handle and a C string.
        let ret = unsafe {
            (self.pool.calls().rbd_lock_break)(self.handle, ffi::LOCK_MODE_EXCLUSIVE, o.as_ptr())
        };
        check(ret.into(), "break the lock of", || {
            format!("{} held by {owner}", self.what())
        })
        .map(drop)
    }

    /// Makes a snapshot and protects it, so clones can be made from it.
    pub fn snapshot_protected(&self, snap: &str) -> Result<()> {
        let s = cstr(snap, "the snapshot name")?;
        let calls = self.pool.calls();
        // SAFETY: a live handle and a C string.
        let ret = unsafe { (calls.rbd_snap_create)(self.handle, s.as_ptr()) };
        check(ret.into(), "snapshot", || format!("{}@{snap}", self.what()))?;
        // SAFETY: as above.
        let ret = unsafe { (calls.rbd_snap_protect)(self.handle, s.as_ptr()) };
        check(ret.into(), "protect", || format!("{}@{snap}", self.what())).map(drop)
    }

    /// Unprotects and removes a snapshot (librbd refuses, EBUSY, while clones of it exist).
    pub fn remove_snapshot(&self, snap: &str) -> Result<()> {
        let s = cstr(snap, "the snapshot name")?;
        let calls = self.pool.calls();
        // SAFETY: a live handle and a C string.
        let ret = unsafe { (calls.rbd_snap_unprotect)(self.handle, s.as_ptr()) };
        if ret != -libc::EINVAL {
            // EINVAL: it was not protected.
            check(ret.into(), "unprotect", || {
                format!("{}@{snap}", self.what())
            })?;
        }
        // SAFETY: as above.
        let ret = unsafe { (calls.rbd_snap_remove)(self.handle, s.as_ptr()) };
        check(ret.into(), "remove snapshot", || {
            format!("{}@{snap}", self.what())
        })
        .map(drop)
    }

    /// The clones of the snapshot this handle was opened at (`pool/image`, or `image` in
    /// this pool), from every pool, those in the trash too.
    pub fn children(&self) -> Result<Vec<String>> {
        let calls = self.pool.calls();
        let mut max = 16usize;
        loop {
            // SAFETY: all-zero is a valid spec (null pointers and integers).
            let mut specs: Vec<ffi::LinkedImageSpec> =
                (0..max).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut count = max;
            // SAFETY: a live handle, an array of `count` specs.
            let ret =
                unsafe { (calls.rbd_list_children3)(self.handle, specs.as_mut_ptr(), &mut count) };
            if ret == -libc::ERANGE && count > max && count <= 1 << 20 {
                max = count;
                continue;
            }
            check(ret.into(), "list the clones of", || self.what())?;
            let names = specs[..count]
                .iter()
                .map(|c| {
                    let (pool, name) = (owned(c.pool_name), owned(c.image_name));
                    if pool == self.pool.name() {
                        name
                    } else {
                        format!("{pool}/{name}")
                    }
                })
                .collect();
            // SAFETY: `count` specs filled in by the call above.
            unsafe { (calls.rbd_linked_image_spec_list_cleanup)(specs.as_mut_ptr(), count) };
            return Ok(names);
        }
    }

    /// Whether `snap` is there and protected (what a clone needs).
    pub fn snapshot_protected_exists(&self, snap: &str) -> Result<(bool, bool)> {
        let s = cstr(snap, "the snapshot name")?;
        let calls = self.pool.calls();
        let mut exists = false;
        // SAFETY: a live handle, a C string, an out-bool.
        let ret = unsafe { (calls.rbd_snap_exists)(self.handle, s.as_ptr(), &mut exists) };
        check(ret.into(), "look for snapshot", || {
            format!("{}@{snap}", self.what())
        })?;
        if !exists {
            return Ok((false, false));
        }
        let mut protected: c_int = 0;
        // SAFETY: as above.
        let ret = unsafe { (calls.rbd_snap_is_protected)(self.handle, s.as_ptr(), &mut protected) };
        check(ret.into(), "read the protection of", || {
            format!("{}@{snap}", self.what())
        })?;
        Ok((true, protected != 0))
    }

    /// A value of the image's key/value metadata.
    pub fn metadata(&self, key: &str) -> Result<Option<String>> {
        let k = cstr(key, "the key")?;
        let mut buf = vec![0u8; 4096];
        let mut len = buf.len();
        // SAFETY: a live handle, a buffer of `len` bytes.
        let ret = unsafe {
            (self.pool.calls().rbd_metadata_get)(
                self.handle,
                k.as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if ret == -libc::ENOENT {
            return Ok(None);
        }
        check(ret.into(), "read metadata", || {
            format!("{} of {}", key, self.what())
        })?;
        Ok(Some(owned(buf.as_ptr().cast())))
    }

    pub fn set_metadata(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (cstr(key, "the key")?, cstr(value, "the value")?);
        // SAFETY: a live handle and C strings.
        let ret =
            unsafe { (self.pool.calls().rbd_metadata_set)(self.handle, k.as_ptr(), v.as_ptr()) };
        check(ret.into(), "write metadata", || {
            format!("{} of {}", key, self.what())
        })
        .map(drop)
    }

    /// Removes a key of the image's metadata (one that is not there is no error).
    pub fn remove_metadata(&self, key: &str) -> Result<()> {
        let k = cstr(key, "the key")?;
        // SAFETY: a live handle and a C string.
        let ret = unsafe { (self.pool.calls().rbd_metadata_remove)(self.handle, k.as_ptr()) };
        if ret == -libc::ENOENT {
            return Ok(());
        }
        check(ret.into(), "remove metadata", || {
            format!("{} of {}", key, self.what())
        })
        .map(drop)
    }

    /// The image's id in its pool: the name the kernel's driver shows it by
    /// (`/sys/bus/rbd/devices/N/image_id`), which a rename does not change.
    pub fn id(&self) -> Result<String> {
        let mut buf = vec![0u8; 64];
        // SAFETY: a live handle, a buffer of its length.
        let ret = unsafe {
            (self.pool.calls().rbd_get_id)(self.handle, buf.as_mut_ptr().cast(), buf.len())
        };
        check(ret.into(), "read the id of", || self.what())?;
        Ok(owned(buf.as_ptr().cast()))
    }
}
