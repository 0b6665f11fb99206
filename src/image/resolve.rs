//! Each versioned image of a manifest (a directory of versions, or versions in a Ceph
//! pool) replaced by one image per version, and every PC put on its own: the version its
//! disk was made over, else the one it is due.

use super::store::VersionName;
use super::{key, Problem, Versions};
use crate::manifest::{Image, Manifest};

pub fn resolve(m: &mut Manifest) -> Vec<Problem> {
    let mut problems = Vec::new();
    let families: Vec<Image> = m
        .images
        .values()
        .filter(|i| (i.store.is_some() || i.rbd_versions.is_some()) && i.version.is_none())
        .cloned()
        .collect();
    for image in families {
        let field = match image.store {
            Some(_) => format!("images.{}.versions", image.name),
            None => format!("images.{}.rbd", image.name),
        };
        let versions = match Versions::open(m, &image.name) {
            Ok(v) => v,
            Err(e) => {
                problems.push((field, e.with_causes()));
                continue;
            }
        };
        let store = versions.view();
        let place = store.dir.display();
        let users: Vec<usize> = (0..m.pcs.len())
            .filter(|&i| m.pcs[i].image == image.name)
            .collect();
        if store.versions.is_empty() {
            if !users.is_empty() {
                problems.push((field, format!("{place} holds no version of {} yet: make the first with `cowctl image import FILE --image {}`", image.name, image.name)));
            }
            continue;
        }
        // Asked while the PCs still name the family (an rbd clone's name comes from it).
        let running: Vec<Option<VersionName>> = users
            .iter()
            .map(|&i| match versions.running(m, &m.pcs[i]) {
                Ok(on) => on,
                Err(e) => {
                    let pc = &m.pcs[i].name;
                    problems.push((field.clone(), format!("{pc}: {}", e.with_causes())));
                    None
                }
            })
            .collect();
        m.images.remove(&image.name);
        for v in store.versions.keys() {
            let e = versions.entry(&image, v);
            m.images.insert(e.name.clone(), e);
        }
        for (i, on) in users.into_iter().zip(running) {
            let pc = &m.pcs[i];
            // Without one of its own, the version it is due; plan, apply and commit refuse
            // a PC whose version is gone (`cow_problem`), and a reset moves it.
            match on.or_else(|| store.target(&pc.name).cloned()) {
                Some(v) if store.versions.contains_key(&v) => m.pcs[i].image = key(&image.name, &v),
                Some(v) => problems.push((field.clone(), format!("{}: {} promotes version {v}, which {place} does not hold", pc.name, versions.promotion_record()))),
                None => problems.push((field.clone(), format!("no version of {} is current yet: make one current with `cowctl image promote {} VERSION`", image.name, image.name))),
            }
        }
    }
    problems
}
