//! A connection to the cluster as one client, and one pool's I/O context: what images are
//! made, renamed, cloned and removed with.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::Arc;

use super::ffi::{self, Calls, IoCtx, Rados};
use super::{calls, check, cstr, Error, Image, Result, Settings};

struct Cluster {
    calls: &'static Calls,
    handle: Rados,
}

// SAFETY: librados's cluster handle is thread-safe (its docs: one handle shared by threads).
unsafe impl Send for Cluster {}
unsafe impl Sync for Cluster {}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle was connected by `Pool::connect`, every ioctx holds an Arc of it.
        unsafe { (self.calls.rados_shutdown)(self.handle) }
    }
}

/// The longest monitor answer taken (`ceph df` of a big cluster is some KiB).
pub const MON_ANSWER_MAX: usize = 4 << 20;

/// One pool of one cluster. Cheap to share (`Arc`); images opened from it keep it alive.
pub struct Pool {
    cluster: Arc<Cluster>,
    pub(super) io: IoCtx,
    name: String,
}

// SAFETY: an I/O context is thread-safe for the calls made here (librados's docs).
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create; images hold an Arc<Pool>, so none is open.
        unsafe { (self.cluster.calls.rados_ioctx_destroy)(self.io) }
    }
}

fn path_cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Nul {
        what: p.display().to_string(),
    })
}

impl Pool {
    /// Connects as `client.<settings.client>` with the settings' configuration and opens
    /// its pool. The client's cache is off: a write is acknowledged only once the cluster
    /// has it (the durability contract), so a crash of cowctl loses nothing it answered.
    pub fn connect(settings: &Settings) -> Result<Arc<Pool>> {
        Self::connect_within(settings, 15)
    }

    /// [`connect`](Self::connect), giving up on a cluster that does not answer (and on
    /// each monitor command) after `seconds`.
    pub fn connect_within(settings: &Settings, seconds: u32) -> Result<Arc<Pool>> {
        let calls = calls()?;
        let name = cstr(&format!("client.{}", settings.client), "the client id")?;
        let cluster_name = cstr("ceph", "")?;
        let mut handle: Rados = ptr::null_mut();
        let what = || format!("client.{}", settings.client);
        // SAFETY: out-pointer to a handle; the strings outlive the call.
        let ret =
            unsafe { (calls.rados_create2)(&mut handle, cluster_name.as_ptr(), name.as_ptr(), 0) };
        check(ret.into(), "create a cluster handle for", what)?;
        let cluster = Arc::new(Cluster { calls, handle });
        let conf = path_cstr(&settings.conf)?;
        // SAFETY: a live handle, a C string.
        let ret = unsafe { (calls.rados_conf_read_file)(handle, conf.as_ptr()) };
        check(ret.into(), "read configuration", || {
            settings.conf.display().to_string()
        })?;
        let set = |key: &str, value: &[u8]| -> Result<()> {
            let (k, v) = (
                cstr(key, key)?,
                CString::new(value).map_err(|_| Error::Nul { what: key.into() })?,
            );
            // SAFETY: a live, not yet connected handle.
            let ret = unsafe { (calls.rados_conf_set)(handle, k.as_ptr(), v.as_ptr()) };
            check(ret.into(), "set", || key.to_string()).map(drop)
        };
        if let Some(keyring) = &settings.keyring {
            set("keyring", keyring.as_os_str().as_bytes())?;
        }
        set("rbd_cache", b"false")?;
        // A cluster that is not there fails the command instead of hanging it.
        let timeout = seconds.to_string();
        set("client_mount_timeout", timeout.as_bytes())?;
        set("rados_mon_op_timeout", timeout.as_bytes())?;
        // SAFETY: a configured handle.
        let ret = unsafe { (calls.rados_connect)(handle) };
        check(ret.into(), "connect to the cluster of", || {
            settings.conf.display().to_string()
        })?;
        let pool = cstr(&settings.pool, "the pool name")?;
        let mut io: IoCtx = ptr::null_mut();
        // SAFETY: a connected handle, an out-pointer.
        let ret = unsafe { (calls.rados_ioctx_create)(handle, pool.as_ptr(), &mut io) };
        check(ret.into(), "open pool", || settings.pool.clone())?;
        Ok(Arc::new(Pool {
            cluster,
            io,
            name: settings.pool.clone(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A value of the client's configuration as librados read it (`mon_host`, `keyring`:
    /// what the kernel's rbd driver needs to reach the cluster as this client).
    pub fn conf(&self, key: &str) -> Result<String> {
        let k = cstr(key, "the option")?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: a connected handle, a buffer of its length.
        let ret = unsafe {
            (self.cluster.calls.rados_conf_get)(
                self.cluster.handle,
                k.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        check(ret.into(), "read the option", || key.to_string())?;
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    /// A monitor command (JSON, as `ceph` sends it: `{"prefix": "health", "format":
    /// "json"}`) and its answer, refused past [`MON_ANSWER_MAX`] bytes.
    pub fn mon_command(&self, command: &str) -> Result<String> {
        let calls = self.cluster.calls;
        let cmd = cstr(command, "the monitor command")?;
        let cmds = [cmd.as_ptr()];
        let (mut out, mut out_len): (*mut std::ffi::c_char, usize) = (ptr::null_mut(), 0);
        let (mut status, mut status_len): (*mut std::ffi::c_char, usize) = (ptr::null_mut(), 0);
        // SAFETY: a connected handle; one command string that outlives the call; out-pointers
        // librados fills with buffers of its own, freed below with rados_buffer_free.
        let ret = unsafe {
            (calls.rados_mon_command)(
                self.cluster.handle,
                cmds.as_ptr(),
                1,
                ptr::null(),
                0,
                &mut out,
                &mut out_len,
                &mut status,
                &mut status_len,
            )
        };
        let take = |buf: *mut std::ffi::c_char, len: usize| {
            let text = if buf.is_null() || len > MON_ANSWER_MAX {
                None
            } else {
                // SAFETY: librados's buffer of `len` bytes, read before it is freed.
                let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
                Some(String::from_utf8_lossy(bytes).into_owned())
            };
            if !buf.is_null() {
                // SAFETY: a buffer librados allocated for this call, freed once.
                unsafe { (calls.rados_buffer_free)(buf) }
            }
            text
        };
        let (answer, said) = (take(out, out_len), take(status, status_len));
        check(ret.into(), "ask the monitors", || {
            format!("{command} ({})", said.unwrap_or_default().trim())
        })?;
        answer.ok_or_else(|| Error::Call {
            op: "read the monitors' answer to",
            what: command.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })
    }

    /// The keyrings the client's key is read from: the settings' own, else those the
    /// configuration names (`keyring`, a list as Ceph reads it: `,` `;` or blanks between).
    pub fn keyrings(&self, settings: &Settings) -> Result<Vec<std::path::PathBuf>> {
        if let Some(k) = &settings.keyring {
            return Ok(vec![k.clone()]);
        }
        Ok(self
            .conf("keyring")?
            .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
            .collect())
    }

    /// This connection's client instance as lockers name it (`client.4123`).
    pub(super) fn instance(&self) -> String {
        // SAFETY: a connected handle.
        let id = unsafe { (self.cluster.calls.rados_get_instance_id)(self.cluster.handle) };
        format!("client.{id}")
    }

    pub(super) fn calls(&self) -> &'static Calls {
        self.cluster.calls
    }

    /// Opens an image for I/O (or a snapshot of it, read-only).
    pub fn open(self: &Arc<Self>, name: &str) -> Result<Image> {
        Image::open(self, name, None, false)
    }

    pub fn open_read_only(self: &Arc<Self>, name: &str, snap: Option<&str>) -> Result<Image> {
        Image::open(self, name, snap, true)
    }

    /// A new image of `size` bytes with objects of 2^`order` bytes.
    pub fn create(&self, name: &str, size: u64, order: u8) -> Result<()> {
        let n = cstr(name, "the image name")?;
        with_order(self.calls(), order, |opts| {
            // SAFETY: a live ioctx and options handle.
            let ret = unsafe { (self.calls().rbd_create4)(self.io, n.as_ptr(), size, opts) };
            check(ret.into(), "create", || self.spec(name)).map(drop)
        })
    }

    /// `child`, a copy-on-write clone of `parent@snap` (a protected snapshot) with
    /// objects of 2^`order` bytes.
    pub fn clone_image(&self, parent: &str, snap: &str, child: &str, order: u8) -> Result<()> {
        let (p, s, c) = (
            cstr(parent, "the image name")?,
            cstr(snap, "the snapshot name")?,
            cstr(child, "the clone's name")?,
        );
        with_order(self.calls(), order, |opts| {
            // SAFETY: live ioctx (used as parent's and child's pool) and options.
            let ret = unsafe {
                (self.calls().rbd_clone3)(
                    self.io,
                    p.as_ptr(),
                    s.as_ptr(),
                    self.io,
                    c.as_ptr(),
                    opts,
                )
            };
            check(ret.into(), "clone", || {
                format!("{} as {}", self.spec(&format!("{parent}@{snap}")), child)
            })
            .map(drop)
        })
    }

    /// Removes an image (which nobody may have open: EBUSY otherwise).
    pub fn remove(&self, name: &str) -> Result<()> {
        let n = cstr(name, "the image name")?;
        // SAFETY: a live ioctx.
        let ret = unsafe { (self.calls().rbd_remove)(self.io, n.as_ptr()) };
        check(ret.into(), "remove", || self.spec(name)).map(drop)
    }

    /// Renames an image; EEXIST when `to` is taken (an rbd rename never replaces).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (cstr(from, "the image name")?, cstr(to, "the image name")?);
        // SAFETY: a live ioctx.
        let ret = unsafe { (self.calls().rbd_rename)(self.io, f.as_ptr(), t.as_ptr()) };
        check(ret.into(), "rename", || {
            format!("{} to {to}", self.spec(from))
        })
        .map(drop)
    }

    /// Whether an image of this name is there.
    pub fn exists(self: &Arc<Self>, name: &str) -> Result<bool> {
        match Image::open(self, name, None, true) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names of the pool's images.
    pub fn list(&self) -> Result<Vec<String>> {
        let calls = self.calls();
        let mut max = 64usize;
        loop {
            let mut specs: Vec<ffi::ImageSpec> = (0..max)
                .map(|_| ffi::ImageSpec {
                    id: ptr::null_mut(),
                    name: ptr::null_mut(),
                })
                .collect();
            let mut count = max;
            // SAFETY: a live ioctx, an array of `count` specs.
            let ret = unsafe { (calls.rbd_list2)(self.io, specs.as_mut_ptr(), &mut count) };
            if ret == -libc::ERANGE && count > max && count <= 1 << 22 {
                max = count;
                continue;
            }
            check(ret.into(), "list the images of pool", || self.name.clone())?;
            let names = specs[..count]
                .iter()
                .filter(|s| !s.name.is_null())
                // SAFETY: NUL-terminated names librbd filled in.
                .map(|s| {
                    unsafe { std::ffi::CStr::from_ptr(s.name) }
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            // SAFETY: `count` specs filled in by the call above.
            unsafe { (calls.rbd_image_spec_list_cleanup)(specs.as_mut_ptr(), count) };
            return Ok(names);
        }
    }

    /// A value of the pool's own key/value metadata (rbd pool metadata).
    pub fn metadata(&self, key: &str) -> Result<Option<String>> {
        let k = cstr(key, "the key")?;
        let mut len = 4096usize;
        loop {
            let mut buf = vec![0u8; len];
            // SAFETY: a live ioctx, a buffer of `len` bytes.
            let ret = unsafe {
                (self.calls().rbd_pool_metadata_get)(
                    self.io,
                    k.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            if ret == -libc::ENOENT {
                return Ok(None);
            }
            if ret == -libc::ERANGE && len > buf.len() && len <= 1 << 24 {
                continue;
            }
            check(ret.into(), "read pool metadata", || {
                format!("{key} of {}", self.name)
            })?;
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
    }

    pub fn set_metadata(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (cstr(key, "the key")?, cstr(value, "the value")?);
        // SAFETY: a live ioctx and C strings.
        let ret = unsafe { (self.calls().rbd_pool_metadata_set)(self.io, k.as_ptr(), v.as_ptr()) };
        check(ret.into(), "write pool metadata", || {
            format!("{key} of {}", self.name)
        })
        .map(drop)
    }

    /// `pool/name`, as `rbd` writes an image.
    pub fn spec(&self, name: &str) -> String {
        format!("{}/{name}", self.name)
    }
}

fn with_order<T>(
    calls: &Calls,
    order: u8,
    f: impl FnOnce(ffi::ImageOptions) -> Result<T>,
) -> Result<T> {
    let mut opts: ffi::ImageOptions = ptr::null_mut();
    // SAFETY: out-pointer; destroyed below.
    unsafe { (calls.rbd_image_options_create)(&mut opts) };
    // A clone's striping is its parent's unless given: one object at a time, of the
    // clone's own size (a stripe unit larger than the object is refused).
    let options = [
        (ffi::IMAGE_OPTION_ORDER, u64::from(order)),
        (ffi::IMAGE_OPTION_STRIPE_UNIT, 1u64 << order),
        (ffi::IMAGE_OPTION_STRIPE_COUNT, 1),
        // Added to the cluster's default features, which may be layering alone (set up
        // for an old kernel's rbd). The exclusive lock keeps two gateways off one PC.
        // Layering: a commit's version is a PC's clone, and clones are made of it. The
        // object map sends reads of what a clone does not hold straight to its parent and
        // counts a PC's fill at once (a 20 GiB clone without one takes 13 s to count,
        // object by object, at every open and takeover). Deep flatten lets an admin's
        // `rbd flatten` free a version's snapshot from the one under it too.
        (
            ffi::IMAGE_OPTION_FEATURES_SET,
            ffi::FEATURE_LAYERING
                | ffi::FEATURE_EXCLUSIVE_LOCK
                | ffi::FEATURE_OBJECT_MAP
                | ffi::FEATURE_FAST_DIFF
                | ffi::FEATURE_DEEP_FLATTEN,
        ),
    ];
    let set = options.iter().try_for_each(|&(key, value)| {
        // SAFETY: a live options handle.
        let ret = unsafe { (calls.rbd_image_options_set_uint64)(opts, key, value) };
        check(
            ret.into(),
            "set the layout (object size, stripes, features) of",
            || "a new image".into(),
        )
        .map(drop)
    });
    let out = set.and_then(|()| f(opts));
    // SAFETY: created above, not used after.
    unsafe { (calls.rbd_image_options_destroy)(opts) };
    out
}
