//! Whether the kernel has a module, without loading it: `/sys/module/<name>` (loaded, or
//! built in with parameters), `modules.builtin` and `modules.dep` under
//! `/lib/modules/<release>` (what modprobe could load).

use std::path::Path;

/// Where a kernel module stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Loaded,
    BuiltIn,
    /// modprobe would load it.
    Loadable,
    Missing,
}

impl Module {
    /// Loaded, built in, or loadable: the kernel can have it when asked.
    pub fn available(self) -> bool {
        self != Module::Missing
    }

    pub fn describe(self, name: &str) -> String {
        match self {
            Module::Loaded => format!("{name} is loaded"),
            Module::BuiltIn => format!("{name} is built in"),
            Module::Loadable => format!("{name} is not loaded but can be (modprobe {name})"),
            Module::Missing => format!("{name} is neither loaded, built in nor installed"),
        }
    }
}

/// Module names say `_` where file names may say `-`.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The module a `modules.dep`/`modules.builtin` line names: `kernel/drivers/md/dm-snapshot.ko.zst: …`.
fn module_of(line: &str) -> Option<String> {
    let path = line.split(':').next()?.trim();
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (!stem.is_empty()).then(|| canonical(stem))
}

fn listed(file: &Path, want: &str) -> bool {
    std::fs::read_to_string(file)
        .map(|t| t.lines().any(|l| module_of(l).as_deref() == Some(want)))
        .unwrap_or(false)
}

/// The module's state: `sys` is /sys, `modules` is /lib/modules/<release>.
pub fn state(sys: &Path, modules: &Path, name: &str) -> Module {
    let name = canonical(name);
    if sys.join("module").join(&name).exists() {
        Module::Loaded
    } else if listed(&modules.join("modules.builtin"), &name) {
        Module::BuiltIn
    } else if listed(&modules.join("modules.dep"), &name) {
        Module::Loadable
    } else {
        Module::Missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_built_in_loadable_or_missing() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        let lib = d.path().join("lib");
        std::fs::create_dir_all(sys.join("module/loop")).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("modules.builtin"), "kernel/drivers/md/dm-mod.ko\n").unwrap();
        std::fs::write(
            lib.join("modules.dep"),
            "kernel/drivers/md/dm-snapshot.ko.zst: kernel/drivers/md/dm-bufio.ko.zst\n\
             kernel/drivers/target/iscsi/iscsi_target_mod.ko.xz: kernel/drivers/target/target_core_mod.ko.xz\n",
        )
        .unwrap();
        assert_eq!(state(&sys, &lib, "loop"), Module::Loaded);
        assert_eq!(state(&sys, &lib, "dm_mod"), Module::BuiltIn);
        assert_eq!(state(&sys, &lib, "dm-snapshot"), Module::Loadable);
        assert_eq!(state(&sys, &lib, "iscsi_target_mod"), Module::Loadable);
        assert_eq!(
            state(&sys, &lib, "dm_bufio"),
            Module::Missing,
            "only a dependency's mention"
        );
        assert_eq!(state(&sys, &lib, "aoe"), Module::Missing);
        assert!(!Module::Missing.available());
        assert!(Module::Loadable
            .describe("dm_snapshot")
            .contains("modprobe dm_snapshot"));
    }
}
