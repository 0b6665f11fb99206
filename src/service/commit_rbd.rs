//! `cowctl image commit` of a served rbd PC: while its I/O is stopped, its clone becomes
//! the new version (nothing copied) and the PC goes on with a fresh clone of it, the same
//! disk it had, so the PC sees no change.

use super::exports::Slot;
use super::{disks, Error, Result};
use crate::engine::PcDisk;
use crate::image::{Committed, RbdStore, VersionName};
use crate::manifest::{Image, Manifest, Pc};

/// Commits `pc` (served in `slot`); returns the commit and the image entry of the version
/// the PC now runs.
pub(super) fn commit(
    m: &Manifest,
    pc: &Pc,
    slot: &Slot,
    version: Option<VersionName>,
    note: &str,
) -> Result<(Committed, Image)> {
    let store =
        RbdStore::open_to_change(m, &m.images[&pc.image], crate::image::rbdstore::Wait::No)?;
    let mut out = None;
    slot.quiesce(|served| {
        let Some(old) = served else {
            let e = Error::NotServed {
                pc: pc.name.clone(),
            };
            out = Some(Err(e));
            return (None, Ok(()));
        };
        let PcDisk::Rbd(disk) = &*old.disk else {
            unreachable!("an rbd PC is served from its clone")
        };
        let (committed, fresh) = match store.commit(m, pc, disk, version, note) {
            Ok(done) => done,
            Err(e) => {
                // A clone renamed away and not back must not be written as the PC's.
                let stranded = matches!(
                    e,
                    crate::image::Error::Rbd(crate::rbdpc::Error::Stranded { .. })
                );
                out = Some(Err(e.into()));
                return (if stranded { None } else { Some(old) }, Ok(()));
            }
        };
        // The old handle is on the version now: closed with `old`, never written again.
        let image = store.entry(&m.images[&pc.image], &committed.version.name);
        let (m, pc) = m.with_pc_on(pc, Some(&image));
        out = Some(Ok((committed, image)));
        (
            Some(disks::served(&m, &pc, PcDisk::Rbd(fresh), None)),
            Ok(()),
        )
    })?;
    out.expect("ran")
}
