//! Warnings: what a manifest may say but should not, printed by `validate`, `plan` and
//! `apply` as `warning: file:line:column: field: message` without changing the exit code.

use super::types::{AclMode, IscsiConfig};
use super::{Builder, Manifest, ManifestWarning};

impl Builder {
    pub(super) fn warn(&mut self, field: &str, message: impl Into<String>) {
        let (line, column) = self.positions.find(field);
        self.warnings.push(ManifestWarning {
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// An initiator name is sent in the clear and is no secret: without CHAP, the ACL keeps
    /// out only those who do not know a PC's name.
    pub(super) fn warn_open_initiator_acl(&mut self, iscsi: Option<&IscsiConfig>) {
        if iscsi.is_some_and(|c| c.acl == AclMode::PerInitiator && c.chap.is_none()) {
            self.warn(
                "iscsi.acl",
                "acl: initiator without chap: anyone who sends a PC's initiator name opens its disk: set iscsi.chap",
            );
        }
    }
}

impl Manifest {
    /// Each warning as one line: `warning: file:line:column: field: message`.
    pub fn warning_lines(&self) -> Vec<String> {
        self.warnings
            .iter()
            .map(|w| {
                format!(
                    "warning: {}:{}:{}: {}: {}",
                    self.path.display(),
                    w.line,
                    w.column,
                    w.field,
                    w.message
                )
            })
            .collect()
    }
}
