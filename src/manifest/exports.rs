//! A PC's export checked against the server's sections: an iSCSI target under the iqn
//! prefix (with its initiator for the ACL), or an AoE shelf.slot with the MACs vblade
//! allows.

use super::raw::RawPc;
use super::{AclMode, AoeConfig, Builder, Export, IscsiConfig, Mac};
use crate::base::iqn::Iqn;

impl Builder {
    pub(super) fn iscsi_export(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
        iscsi: Option<&IscsiConfig>,
    ) -> Option<Export> {
        let Some(cfg) = iscsi else {
            self.error(
                &at("export"),
                format!("{name} is exported over iSCSI but the manifest has no iscsi section"),
            );
            return None;
        };
        let target = format!("{}:{name}", cfg.iqn_prefix).parse::<Iqn>().ok()?;
        let initiator = match value("initiator") {
            Some(i) => match i.parse::<Iqn>() {
                Ok(q) => Some(q),
                Err(e) => {
                    self.error(&at("initiator"), format!("{name}: {e}"));
                    None
                }
            },
            None if cfg.acl == AclMode::PerInitiator => {
                self.error(
                    &at("initiator"),
                    format!("{name}: needs its initiator IQN for the ACL (or set iscsi.acl: open)"),
                );
                None
            }
            None => None,
        };
        Some(Export::Iscsi { target, initiator })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn aoe_export(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
        raw: &RawPc,
        defaults: &RawPc,
        mac: Option<Mac>,
        aoe: Option<&AoeConfig>,
    ) -> Option<Export> {
        if aoe.is_none() {
            self.error(
                &at("export"),
                format!("{name} is exported over AoE but the manifest has no aoe section"),
            );
        }
        let shelf = value("shelf").and_then(|s| s.parse::<u16>().ok().filter(|&s| s < 0xffff));
        let slot = value("slot").and_then(|s| s.parse::<u8>().ok().filter(|&s| s < 0xff));
        if shelf.is_none() {
            self.error(
                &at("shelf"),
                format!("{name}: an AoE export needs a shelf from 0 to 65534"),
            );
        }
        if slot.is_none() {
            self.error(
                &at("slot"),
                format!("{name}: an AoE export needs a slot from 0 to 254"),
            );
        }
        let mut macs = Vec::new();
        match raw.aoe_macs.as_ref().or(defaults.aoe_macs.as_ref()) {
            Some(list) => {
                for (i, m) in list.iter().enumerate() {
                    match m.as_string().parse::<Mac>() {
                        Ok(m) => macs.push(m),
                        Err(e) => {
                            self.error(&at(&format!("aoe_macs[{i}]")), format!("{name}: {e}"))
                        }
                    }
                }
            }
            None => macs.extend(mac),
        }
        if macs.is_empty() {
            self.error(&at("mac"), format!("{name}: an AoE export needs the PC's mac (or aoe_macs) for vblade's allow list"));
        }
        Some(Export::Aoe {
            shelf: shelf?,
            slot: slot?,
            macs,
        })
    }
}
