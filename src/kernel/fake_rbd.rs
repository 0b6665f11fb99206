//! The recording fake's rbd driver: maps are logged ("rbd map rbd/room.pc-1", "rbd unmap
//! 0") and kept as devices with ids from 0, major 251, as the kernel numbers them; a
//! device under a dm table is refused unmapping, as the kernel refuses it (EBUSY).

use super::error::RbdMapError;
use super::fake::Fake;
use super::rbdmap::{MapRequest, Mapped, RbdMaps};
use super::DevNum;

impl RbdMaps for Fake {
    fn list(&self) -> Result<Vec<Mapped>, RbdMapError> {
        Ok(self.traced("rbd list".into()).rbd.clone())
    }

    fn map(&self, req: &MapRequest) -> Result<Mapped, RbdMapError> {
        req.check()?;
        let mut s = self.call(format!("rbd map {}/{}", req.pool, req.image))?;
        let id = (0..)
            .find(|i| !s.rbd.iter().any(|m| m.id == *i))
            .unwrap_or(0);
        let mapped = Mapped {
            id,
            pool: req.pool.clone(),
            name: req.image.clone(),
            image_id: format!("id-of-{}", req.image),
            number: DevNum {
                major: 251,
                minor: id * 16,
            },
            size: 1 << 30,
        };
        s.rbd.push(mapped.clone());
        Ok(mapped)
    }

    fn unmap(&self, id: u32) -> Result<(), RbdMapError> {
        let mut s = self.call(format!("rbd unmap {id}"))?;
        let Some(at) = s.rbd.iter().position(|m| m.id == id) else {
            return Err(RbdMapError::Vanished {
                image: format!("/dev/rbd{id}"),
            });
        };
        let number = s.rbd[at].number.to_string();
        let holds = |p: &str| p.split_whitespace().any(|w| w == number);
        if s.dm.values().any(|d| holds(&d.target.params)) {
            return Err(RbdMapError::Unmap {
                id,
                source: Box::new(RbdMapError::Write {
                    path: "/sys/bus/rbd/remove_single_major".into(),
                    source: std::io::Error::from_raw_os_error(libc::EBUSY),
                }),
            });
        }
        s.rbd.remove(at);
        Ok(())
    }
}
