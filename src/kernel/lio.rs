//! The LIO iSCSI target as an object tree in configfs, shaped like rtslib: a storage object
//! (iblock backstore on the PC's dm device), a target with one TPG, its LUN, portals, and an
//! ACL per initiator (or open mode), with CHAP when configured. Creation undoes its own part
//! when a step fails; deletion follows rtslib's teardown order, children first.

use super::error::ConfigfsError;
pub use super::error::LioError;

type Result<T, E = LioError> = std::result::Result<T, E>;

use super::configfs::{join, ConfigFs};
use crate::base::iqn::Iqn;
use crate::base::netaddr::Portal;

/// Storage objects cowctl owns are named with this prefix.
pub const SO_PREFIX: &str = "cowctl-";
const TPG: &str = "tpgt_1";
const LUN: &str = "lun_0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Only these initiators, each with its own ACL.
    Initiators(Vec<Iqn>),
    /// Any initiator (LIO demo mode), writable.
    Open,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub userid: String,
    pub password: String,
    /// Mutual CHAP: what the target answers with.
    pub mutual: Option<(String, String)>,
}

/// The secrets stay out of debug output (plans and test failures print it).
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("userid", &self.userid)
            .field("password", &"…")
            .field("mutual", &self.mutual.as_ref().map(|(u, _)| (u, "…")))
            .finish()
    }
}

/// What a PC's iSCSI export must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub iqn: Iqn,
    /// Storage object name, `cowctl-<pc>`.
    pub so_name: String,
    /// The unit serial number (VPD page 0x80), the same on both backends.
    pub serial: String,
    /// The block device node to serve.
    pub device: String,
    pub portals: Vec<Portal>,
    pub access: Access,
    pub chap: Option<Credentials>,
}

/// A target as found in configfs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedTarget {
    pub iqn: String,
    pub enabled: bool,
    /// `core/<hba>/<so>` the LUN points at, if any.
    pub backstore: Option<String>,
    pub device: Option<String>,
    pub portals: Vec<String>,
    pub acls: Vec<String>,
    pub open: bool,
    /// The CHAP credentials configured (of the first ACL, or the TPG in open mode).
    pub chap: Option<Credentials>,
    /// Initiators logged in now.
    pub sessions: Vec<String>,
}

impl ObservedTarget {
    /// True when the target is what `spec` asks for, whatever node names its device.
    pub fn matches_ignoring_device(&self, spec: &TargetSpec) -> bool {
        let mut s = spec.clone();
        s.device = self.device.clone().unwrap_or_default();
        self.matches(&s)
    }

    /// True when the target is exactly what `spec` asks for.
    pub fn matches(&self, spec: &TargetSpec) -> bool {
        let mut portals: Vec<String> = spec.portals.iter().map(|p| p.to_string()).collect();
        portals.sort();
        let acls: Vec<String> = match &spec.access {
            Access::Initiators(list) => {
                let mut v: Vec<String> = list.iter().map(|i| i.to_string()).collect();
                v.sort();
                v
            }
            Access::Open => Vec::new(),
        };
        self.enabled
            && self.device.as_deref() == Some(spec.device.as_str())
            && self
                .backstore
                .as_deref()
                .is_some_and(|b| b.ends_with(&format!("/{}", spec.so_name)))
            && self.portals == portals
            && self.acls == acls
            && self.open == (spec.access == Access::Open)
            && self.chap == spec.chap
    }
}

/// LIO shows an unset value as "NULL" (and takes "NULL" to clear one).
fn read_credentials(fs: &dyn ConfigFs, auth: &str) -> Credentials {
    let get = |name: &str| {
        fs.read(&join(&[auth, name]))
            .map(|v| v.trim().to_string())
            .ok()
            .filter(|v| !v.is_empty() && v != "NULL")
    };
    Credentials {
        userid: get("userid").unwrap_or_default(),
        password: get("password").unwrap_or_default(),
        mutual: get("userid_mutual").zip(get("password_mutual")),
    }
}

fn write_credentials(fs: &dyn ConfigFs, auth: &str, c: &Credentials) -> Result<(), ConfigfsError> {
    fs.write(&join(&[auth, "userid"]), &c.userid)?;
    fs.write(&join(&[auth, "password"]), &c.password)?;
    if let Some((user, secret)) = &c.mutual {
        fs.write(&join(&[auth, "userid_mutual"]), user)?;
        fs.write(&join(&[auth, "password_mutual"]), secret)?;
    }
    Ok(())
}

pub struct Lio<'a> {
    pub fs: &'a dyn ConfigFs,
}

impl Lio<'_> {
    fn tpg(iqn: &str) -> String {
        join(&["iscsi", iqn, TPG])
    }

    /// Every iSCSI target, with what hangs under it.
    pub fn observe(&self) -> Result<Vec<ObservedTarget>> {
        let mut out = Vec::new();
        for iqn in self.fs.list("iscsi")? {
            if iqn.starts_with("iqn.") || iqn.starts_with("eui.") || iqn.starts_with("naa.") {
                out.push(self.read_target(&iqn)?);
            }
        }
        Ok(out)
    }

    /// One target, without walking the others (None when it is not there).
    pub fn observe_target(&self, iqn: &str) -> Result<Option<ObservedTarget>> {
        if self.fs.exists(&join(&["iscsi", iqn])) {
            self.read_target(iqn).map(Some)
        } else {
            Ok(None)
        }
    }

    fn read_target(&self, iqn: &str) -> Result<ObservedTarget> {
        let fs = self.fs;
        let tpg = Self::tpg(iqn);
        let mut t = ObservedTarget {
            iqn: iqn.to_string(),
            ..Default::default()
        };
        if fs.exists(&tpg) {
            t.enabled = fs
                .read(&join(&[&tpg, "enable"]))
                .map(|v| v.trim() == "1")
                .unwrap_or(false);
            t.portals = fs.list(&join(&[&tpg, "np"]))?;
            t.acls = fs.list(&join(&[&tpg, "acls"]))?;
            let attr = |name: &str| {
                fs.read(&join(&[&tpg, "attrib", name]))
                    .map(|v| v.trim() == "1")
                    .unwrap_or(false)
            };
            t.open = attr("generate_node_acls");
            if attr("authentication") {
                let auth = match t.acls.first() {
                    Some(acl) if !t.open => join(&[&tpg, "acls", acl, "auth"]),
                    _ => join(&[&tpg, "auth"]),
                };
                t.chap = Some(read_credentials(fs, &auth));
            }
            let lun = join(&[&tpg, "lun", LUN]);
            if let Some(link) = fs.links(&lun)?.into_iter().next() {
                t.backstore = self.link_target(&join(&[&lun, &link]));
                t.device = t
                    .backstore
                    .as_ref()
                    .and_then(|so| fs.read(&join(&[so, "udev_path"])).ok())
                    .map(|s| s.trim().to_string());
            }
            t.sessions = self.sessions(&tpg, &t.acls)?;
        }
        Ok(t)
    }

    /// `core/<hba>/<so>` of a LUN's link.
    fn link_target(&self, link: &str) -> Option<String> {
        let target = self.fs.readlink(link).ok()?;
        target.find("core/").map(|i| target[i..].to_string())
    }

    fn sessions(&self, tpg: &str, acls: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for acl in acls {
            let info = self
                .fs
                .read(&join(&[tpg, "acls", acl, "info"]))
                .unwrap_or_default();
            if info.contains("InitiatorName:") {
                out.push(acl.clone());
            }
        }
        if let Ok(dynamic) = self.fs.read(&join(&[tpg, "dynamic_sessions"])) {
            out.extend(
                dynamic
                    .split_whitespace()
                    .filter(|s| s.starts_with("iqn."))
                    .map(String::from),
            );
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Storage objects named `cowctl-*`, as `core/<hba>/<so>`.
    pub fn storage_objects(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for hba in self
            .fs
            .list("core")?
            .into_iter()
            .filter(|h| h.starts_with("iblock_"))
        {
            for so in self.fs.list(&join(&["core", &hba]))? {
                if so.starts_with(SO_PREFIX) {
                    out.push(join(&["core", &hba, &so]));
                }
            }
        }
        Ok(out)
    }

    /// Builds the whole export; on failure removes what it made and says which step failed.
    pub fn create(&self, spec: &TargetSpec) -> Result<()> {
        let so = self.create_storage_object(spec)?;
        if let Err(e) = self.create_target(spec, &so) {
            let _ = self.delete_target(spec.iqn.as_str());
            let _ = self.delete_storage_object(&so);
            return Err(LioError::Create {
                iqn: spec.iqn.to_string(),
                source: Box::new(e),
            });
        }
        Ok(())
    }

    fn create_storage_object(&self, spec: &TargetSpec) -> Result<String> {
        let fs = self.fs;
        let existing = fs.list("core")?;
        let index = (0..)
            .find(|i| !existing.contains(&format!("iblock_{i}")))
            .expect("a free index");
        let hba = join(&["core", &format!("iblock_{index}")]);
        let so = join(&[&hba, &spec.so_name]);
        let made = (|| -> Result<(), ConfigfsError> {
            fs.mkdir(&hba)?;
            fs.mkdir(&so)?;
            fs.write(
                &join(&[&so, "control"]),
                &format!("udev_path={}", spec.device),
            )?;
            fs.write(&join(&[&so, "udev_path"]), &spec.device)?;
            fs.write(&join(&[&so, "enable"]), "1")?;
            // The identity the userspace target reports too (`diskid`), so a
            // PC sees the same disk on either backend. Set before the LUN exports it.
            fs.write(&join(&[&so, "wwn/vpd_unit_serial"]), &spec.serial)?;
            use crate::base::diskid::{PRODUCT, REVISION, VENDOR};
            fs.write(&join(&[&so, "wwn/vendor_id"]), VENDOR)?;
            fs.write(&join(&[&so, "wwn/product_id"]), PRODUCT)?;
            fs.write(&join(&[&so, "wwn/revision"]), REVISION)?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = fs.rmdir(&so);
            let _ = fs.rmdir(&hba);
            return Err(LioError::Backstore {
                device: spec.device.clone(),
                source: e,
            });
        }
        Ok(so)
    }

    fn create_target(&self, spec: &TargetSpec, so: &str) -> Result<()> {
        let fs = self.fs;
        if !fs.exists("iscsi") {
            // Registers the iSCSI fabric (the kernel loads iscsi_target_mod).
            fs.mkdir("iscsi").map_err(LioError::Fabric)?;
        }
        let target = join(&["iscsi", spec.iqn.as_str()]);
        let tpg = Self::tpg(spec.iqn.as_str());
        fs.mkdir(&target)?;
        fs.mkdir(&tpg)?;
        let lun = join(&[&tpg, "lun", LUN]);
        fs.mkdir(&lun)?;
        fs.symlink(so, &join(&[&lun, &spec.so_name]))?;
        for p in &spec.portals {
            fs.mkdir(&join(&[&tpg, "np", &p.to_string()]))
                .map_err(|source| LioError::Portal {
                    portal: p.to_string(),
                    source,
                })?;
        }
        let attr = |name: &str, v: &str| fs.write(&join(&[&tpg, "attrib", name]), v);
        match &spec.access {
            Access::Open => {
                attr("generate_node_acls", "1")?;
                attr("cache_dynamic_acls", "1")?;
                attr("demo_mode_write_protect", "0")?;
                if let Some(c) = &spec.chap {
                    write_credentials(fs, &join(&[&tpg, "auth"]), c)?;
                }
            }
            Access::Initiators(list) => {
                attr("generate_node_acls", "0")?;
                for initiator in list {
                    let acl = join(&[&tpg, "acls", initiator.as_str()]);
                    fs.mkdir(&acl)?;
                    fs.mkdir(&join(&[&acl, LUN]))?;
                    fs.symlink(&lun, &join(&[&acl, LUN, &spec.so_name]))?;
                    fs.write(&join(&[&acl, LUN, "write_protect"]), "0")?;
                    if let Some(c) = &spec.chap {
                        write_credentials(fs, &join(&[&acl, "auth"]), c)?;
                    }
                }
            }
        }
        attr(
            "authentication",
            if spec.chap.is_some() { "1" } else { "0" },
        )?;
        fs.write(&join(&[&tpg, "enable"]), "1")?;
        Ok(())
    }

    /// Enables or disables the TPG: disabling drops every session (and refuses new ones).
    pub fn set_enabled(&self, iqn: &str, enabled: bool) -> Result<()> {
        Ok(self.fs.write(
            &join(&[&Self::tpg(iqn), "enable"]),
            if enabled { "1" } else { "0" },
        )?)
    }

    /// Tears a target down in rtslib's order, then its storage object.
    pub fn delete(&self, iqn: &str) -> Result<()> {
        let so = self.observe_target(iqn)?.and_then(|t| t.backstore);
        self.delete_target(iqn)?;
        if let Some(so) = so {
            self.delete_storage_object(&so)?;
        }
        Ok(())
    }

    fn delete_target(&self, iqn: &str) -> Result<()> {
        let fs = self.fs;
        let target = join(&["iscsi", iqn]);
        if !fs.exists(&target) {
            return Ok(());
        }
        let tpg = Self::tpg(iqn);
        if fs.exists(&tpg) {
            // 1. Stop: no new logins, sessions dropped.
            let _ = fs.write(&join(&[&tpg, "enable"]), "0");
            // 2. ACLs: mapped-LUN links, mapped LUNs, the ACL.
            for acl in fs.list(&join(&[&tpg, "acls"]))? {
                let a = join(&[&tpg, "acls", &acl]);
                for mapped in fs.list(&a)?.into_iter().filter(|n| n.starts_with("lun_")) {
                    let m = join(&[&a, &mapped]);
                    for link in fs.links(&m)? {
                        fs.unlink(&join(&[&m, &link]))?;
                    }
                    fs.rmdir(&m)?;
                }
                fs.rmdir(&a)?;
            }
            // 3. LUNs: the storage object link, then the LUN.
            for lun in fs.list(&join(&[&tpg, "lun"]))? {
                let l = join(&[&tpg, "lun", &lun]);
                for link in fs.links(&l)? {
                    fs.unlink(&join(&[&l, &link]))?;
                }
                fs.rmdir(&l)?;
            }
            // 4. Portals.
            for np in fs.list(&join(&[&tpg, "np"]))? {
                fs.rmdir(&join(&[&tpg, "np", &np]))?;
            }
            // 5. The TPG, then the target.
            fs.rmdir(&tpg)?;
        }
        Ok(fs.rmdir(&target)?)
    }

    fn delete_storage_object(&self, so: &str) -> Result<()> {
        if self.fs.exists(so) {
            self.fs.rmdir(so)?;
        }
        let hba = so
            .rsplit_once('/')
            .map(|(h, _)| h.to_string())
            .unwrap_or_default();
        if self.fs.exists(&hba)
            && self
                .fs
                .list(&hba)?
                .iter()
                .all(|n| n == "hba_info" || n == "hba_mode")
        {
            self.fs.rmdir(&hba)?;
        }
        Ok(())
    }
}
