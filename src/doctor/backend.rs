//! Which backend will serve and why, and whether the kernel has what the kernel backend
//! uses: device-mapper's snapshot target, loop devices, LIO over configfs, vblade.
//! The choice is `control::choose::choose`'s, predicted without loading anything: the
//! kernel when /dev/mapper/control exists or dm_snapshot can be loaded (resolve loads it).

use super::modules::{self, Module};
use super::{Area, Check, Host};
use crate::manifest::{Backend, Export, Manifest};
use crate::room::choose::BackendKind;

/// The predicted backend and the sentence that says why.
pub struct Resolution {
    pub backend: BackendKind,
    pub why: String,
}

/// Whether the kernel has device-mapper, or can load it; the sentence says what was seen.
fn device_mapper(host: &Host) -> (bool, String) {
    let control = host.dev.join("mapper/control");
    if control.exists() {
        return (true, format!("{} exists", control.display()));
    }
    let snap = modules::state(&host.sys, &host.modules, "dm_snapshot");
    let seen = format!(
        "{} is missing and {} (looked in {})",
        control.display(),
        snap.describe("dm_snapshot"),
        host.modules.display()
    );
    (snap.available(), seen)
}

pub fn resolve(m: &Manifest, host: &Host) -> Resolution {
    let (dm, seen) = device_mapper(host);
    let (backend, why) = match m.backend {
        Backend::Kernel => (
            BackendKind::Kernel,
            format!("the manifest says backend: kernel; {seen}"),
        ),
        Backend::Userspace => (
            BackendKind::Userspace,
            "the manifest says backend: userspace".to_string(),
        ),
        Backend::Auto if dm => (
            BackendKind::Kernel,
            format!("backend: auto and device-mapper is there: {seen}"),
        ),
        Backend::Auto => (
            BackendKind::Userspace,
            format!("backend: auto and there is no device-mapper: {seen}"),
        ),
    };
    Resolution { backend, why }
}

/// The backend line, then (for the kernel backend) one line per kernel part it uses.
pub fn checks(m: &Manifest, host: &Host) -> Vec<Check> {
    let r = resolve(m, host);
    let (dm, _) = device_mapper(host);
    let mut out = vec![match (r.backend, dm) {
        (BackendKind::Userspace, _) => Check::ok(
            Area::Backend,
            format!("cowctl serve's userspace engine will serve: {}", r.why),
        ),
        (BackendKind::Kernel, true) => Check::ok(
            Area::Backend,
            format!("the kernel (loop + dm-snapshot) will serve: {}", r.why),
        ),
        (BackendKind::Kernel, false) => Check::fail(
            Area::Backend,
            format!("the kernel cannot serve: {}", r.why),
            "install the running kernel's modules and run modprobe dm_snapshot, or set backend: auto to serve with the userspace engine",
        ),
    }];
    if r.backend == BackendKind::Kernel {
        out.push(snapshot_target(host));
        out.push(loop_devices(host));
        if m.pcs
            .iter()
            .any(|p| matches!(p.export, Export::Iscsi { .. }))
        {
            out.push(lio(host));
        }
        if m.pcs.iter().any(|p| matches!(p.export, Export::Aoe { .. })) {
            out.push(vblade(host));
        }
    }
    out
}

/// dm-snapshot: in the kernel's list of targets, or a module cowctl loads on first use.
fn snapshot_target(host: &Host) -> Check {
    let area = Area::DeviceMapper;
    let listed = host.dm.targets();
    if listed
        .as_ref()
        .is_some_and(|t| t.iter().any(|n| n == "snapshot"))
    {
        return Check::ok(
            area,
            "the snapshot target is loaded (dmsetup targets lists it)",
        );
    }
    match modules::state(&host.sys, &host.modules, "dm_snapshot") {
        Module::Loaded | Module::BuiltIn if listed.is_none() => Check::ok(
            area,
            "dm_snapshot is in the kernel (its targets could not be listed: run doctor as root to see them)",
        ),
        Module::Loaded | Module::BuiltIn => Check::fail(
            area,
            "dm_snapshot is in the kernel but the snapshot target is not listed",
            "modprobe dm_snapshot, then see dmesg",
        ),
        Module::Loadable => Check::ok(
            area,
            "the snapshot target is not loaded yet; cowctl loads dm_snapshot on first use",
        ),
        Module::Missing => Check::fail(
            area,
            format!(
                "no snapshot target: dm_snapshot is neither loaded, built in nor in {}",
                host.modules.display()
            ),
            "install the running kernel's modules (dm_snapshot), or set backend: userspace",
        ),
    }
}

fn loop_devices(host: &Host) -> Check {
    let control = host.dev.join("loop-control");
    let state = modules::state(&host.sys, &host.modules, "loop");
    if control.exists() {
        Check::ok(Area::Loop, format!("{} exists", control.display()))
    } else if state.available() {
        Check::ok(
            Area::Loop,
            format!("{}; cowctl loads it on first use", state.describe("loop")),
        )
    } else {
        Check::fail(
            Area::Loop,
            format!("no {} and {}", control.display(), state.describe("loop")),
            "install the running kernel's modules and run modprobe loop",
        )
    }
}

/// configfs mounted at /sys/kernel/config, and LIO's modules for iSCSI exports.
fn lio(host: &Host) -> Check {
    let config = host.sys.join("kernel/config");
    let mounted = std::fs::read_to_string(host.proc.join("mounts"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("configfs"));
    let parts = ["target_core_mod", "target_core_iblock", "iscsi_target_mod"]
        .map(|n| (n, modules::state(&host.sys, &host.modules, n)));
    let missing: Vec<&str> = parts
        .iter()
        .filter(|(_, s)| !s.available())
        .map(|(n, _)| *n)
        .collect();
    let fs = if mounted {
        format!("configfs is mounted at {}", config.display())
    } else {
        format!(
            "configfs is not mounted at {} yet (cowctl mounts it)",
            config.display()
        )
    };
    if missing.is_empty() {
        let states: Vec<String> = parts.iter().map(|(n, s)| s.describe(n)).collect();
        return Check::ok(Area::Lio, format!("{fs}; {}", states.join(", ")));
    }
    Check::fail(
        Area::Lio,
        format!("{fs}; missing LIO modules: {}", missing.join(", ")),
        format!(
            "install the running kernel's modules ({}), or set backend: userspace (its own iSCSI target needs none)",
            missing.join(", ")
        ),
    )
}

/// vblade for `export: aoe` PCs; the aoe module is the initiators' driver, said for completeness.
fn vblade(host: &Host) -> Check {
    let aoe = modules::state(&host.sys, &host.modules, "aoe").describe("aoe");
    match host.program("vblade") {
        Some(p) => Check::ok(
            Area::Aoe,
            format!(
                "vblade is {} (the aoe module, which only initiators need: {aoe})",
                p.display()
            ),
        ),
        None => Check::fail(
            Area::Aoe,
            "the kernel backend exports AoE PCs with vblade, which is not installed",
            "apt-get install vblade",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Status;
    use super::*;

    const ROOM: &str =
        "images:\n  g:\n    path: /g.img\ndefaults:\n  image: g\n  cow_dir: /c\n  cow_size: 1GiB\n";

    fn room(dir: &std::path::Path, backend: &str, pcs: &str) -> Manifest {
        manifest(
            dir,
            &format!(
                "{ROOM}{backend}iscsi:\n  iqn_prefix: iqn.2024-01.lan.t\n  portals: [\"127.0.0.1:3260\"]\n  acl: open\n\
                 aoe:\n  interface: lo\npcs:\n{pcs}"
            ),
        )
    }

    #[test]
    fn without_device_mapper_auto_means_userspace_and_says_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let (net, dm, clock) = (
            FakeNet(vec![]),
            FakeDm(None),
            FakeClock {
                synced: crate::doctor::clock::Synced::Yes,
                now: 0,
            },
        );
        let h = host(d.path(), &net, &dm, &clock);
        let m = room(d.path(), "", "  - name: a\n    export: nbd\n");
        let c = checks(&m, &h);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].status, Status::Ok);
        assert!(
            c[0].says.contains("userspace engine will serve"),
            "{}",
            c[0]
        );
        assert!(c[0].says.contains("mapper/control is missing"), "{}", c[0]);
        assert!(
            c[0].says.contains("dm_snapshot is neither loaded"),
            "{}",
            c[0]
        );

        let m = room(
            d.path(),
            "backend: kernel\n",
            "  - name: a\n    export: nbd\n",
        );
        let c = checks(&m, &h);
        assert_eq!(c[0].status, Status::Fail, "{}", c[0]);
        assert!(c[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("modprobe dm_snapshot"));
    }

    #[test]
    fn a_loadable_dm_snapshot_means_the_kernel_and_its_parts_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let (net, dm, clock) = (
            FakeNet(vec![]),
            FakeDm(Some(vec!["linear".into()])),
            FakeClock {
                synced: crate::doctor::clock::Synced::Yes,
                now: 0,
            },
        );
        let h = host(d.path(), &net, &dm, &clock);
        std::fs::write(
            h.modules.join("modules.dep"),
            "kernel/drivers/md/dm-snapshot.ko:\nkernel/drivers/block/loop.ko:\nkernel/drivers/target/target_core_mod.ko:\n",
        )
        .unwrap();
        let m = room(
            d.path(),
            "",
            "  - name: a\n    export: iscsi\n  - name: b\n    export: aoe\n    shelf: 1\n    slot: 1\n    mac: 52:54:00:00:00:01\n",
        );
        let c = checks(&m, &h);
        let line = |a: Area| {
            c.iter()
                .find(|x| x.area == a)
                .unwrap_or_else(|| panic!("{a}: {c:?}"))
        };
        assert!(line(Area::Backend)
            .says
            .contains("the kernel (loop + dm-snapshot) will serve"));
        assert_eq!(
            line(Area::DeviceMapper).status,
            Status::Ok,
            "{}",
            line(Area::DeviceMapper)
        );
        assert_eq!(line(Area::Loop).status, Status::Ok);
        let lio = line(Area::Lio);
        assert_eq!(lio.status, Status::Fail);
        assert!(
            lio.says.contains("target_core_iblock, iscsi_target_mod"),
            "{lio}"
        );
        assert!(lio.says.contains("not mounted"), "{lio}");
        let aoe = line(Area::Aoe);
        assert_eq!(aoe.status, Status::Fail);
        assert_eq!(aoe.fix.as_deref(), Some("apt-get install vblade"));

        program(&h, "vblade");
        std::fs::create_dir_all(h.sys.join("module/target_core_iblock")).unwrap();
        std::fs::create_dir_all(h.sys.join("module/iscsi_target_mod")).unwrap();
        std::fs::write(
            h.proc.join("mounts"),
            "configfs /sys/kernel/config configfs rw 0 0\n",
        )
        .unwrap();
        let c = checks(&m, &h);
        assert!(c.iter().all(|x| x.status == Status::Ok), "{c:?}");
    }

    #[test]
    fn dm_snapshot_missing_from_a_kernel_with_device_mapper_fails() {
        let d = tempfile::tempdir().unwrap();
        let (net, dm, clock) = (
            FakeNet(vec![]),
            FakeDm(Some(vec!["linear".into()])),
            FakeClock {
                synced: crate::doctor::clock::Synced::Yes,
                now: 0,
            },
        );
        let h = host(d.path(), &net, &dm, &clock);
        std::fs::create_dir_all(h.dev.join("mapper")).unwrap();
        std::fs::write(h.dev.join("mapper/control"), "").unwrap();
        let m = room(d.path(), "", "  - name: a\n    export: nbd\n");
        let c = checks(&m, &h);
        assert!(c[0].says.contains("device-mapper is there"), "{}", c[0]);
        assert_eq!(c[1].area, Area::DeviceMapper);
        assert_eq!(c[1].status, Status::Fail, "{}", c[1]);
        assert_eq!(c[2].status, Status::Fail, "no loop: {}", c[2]);
    }
}
