//! The kernel path on rbd storage against the recording fake kernel: `down` removes a PC's
//! export and linear device before it unmaps the clone (the fake, like the kernel, refuses
//! to unmap a device a table still holds), and unmaps a clone left mapped with no device
//! (a map whose device was never made) or under a parked device (a reset stopped in its
//! pause). What needs the cluster runs in the VM (tests/vm_kernel_rbd.rs).

use cowctl::control::observe::Observed;
use cowctl::control::plan::plan_down;
use cowctl::control::{apply, Ctx};
use cowctl::kernel::devmapper::Target;
use cowctl::kernel::fake::Fake;
use cowctl::kernel::rbdmap::MapRequest;
use cowctl::manifest::Manifest;
use cowctl::room::step::Step;

fn manifest(dir: &std::path::Path) -> Manifest {
    let text = format!(
        "backend: kernel
ceph:
  conf: {d}/ceph.conf
  pool: rbd
  prefix: kroom
images:
  g:
    storage: rbd
    rbd: kgold@base
defaults:
  image: g
  cow_dir: {d}
  cow_size: 8MiB
iscsi:
  iqn_prefix: iqn.2024-01.lan.k
  portals: [\"127.0.0.1:3260\"]
  acl: open
pcs:
  - name: pc-{{1..3}}
",
        d = dir.display()
    );
    Manifest::parse(&dir.join("room.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

fn map(fake: &Fake, image: &str) -> cowctl::kernel::rbdmap::Mapped {
    let req = MapRequest {
        monitors: vec!["10.0.0.1:3300".parse().unwrap()],
        msgr2: true,
        client: "admin".into(),
        secret: "AQAo==".into(),
        pool: "rbd".into(),
        image: image.into(),
    };
    fake.kernel().rbd.map(&req).unwrap()
}

#[test]
fn down_removes_the_device_then_unmaps_every_mapping_of_the_clone() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let fake = Fake::new();
    let k = fake.kernel();
    // pc-1: mapped, a linear device over it. pc-2: mapped, no device (its map's device
    // was never made). pc-3: parked on an error table by a reset that stopped, mapped.
    let one = map(&fake, "kroom.pc-1");
    k.dm.create(
        "cowctl-pc-1",
        &Target::linear(16384, &one.number.to_string()),
    )
    .unwrap();
    map(&fake, "kroom.pc-2");
    k.dm.create("cowctl-pc-3", &Target::error(16384)).unwrap();
    map(&fake, "kroom.pc-3");
    map(&fake, "other.pc-1");
    let ctx = Ctx {
        manifest: &m,
        kernel: &k,
        run_dir: dir.path().join("run"),
    };
    let obs = Observed::read(&k).unwrap();
    let pcs: Vec<_> = m.pcs.iter().collect();
    let teardown = plan_down(&ctx, &obs, &pcs);
    let lines: Vec<Vec<String>> = (teardown.pcs.iter())
        .map(|g| g.iter().map(ToString::to_string).collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec![
                "remove dm snapshot cowctl-pc-1".to_string(),
                "unmap /dev/rbd0 (rbd/kroom.pc-1)".into()
            ],
            vec!["unmap /dev/rbd1 (rbd/kroom.pc-2)".into()],
            vec![
                "remove dm snapshot cowctl-pc-3".into(),
                "unmap /dev/rbd2 (rbd/kroom.pc-3)".into()
            ],
        ],
        "{lines:#?}"
    );
    assert!(matches!(teardown.pcs[0][1], Step::UnmapRbd { id: 0, .. }));
    apply::run_teardown(&ctx, &teardown, &mut |_, _| {}).unwrap();
    let left = k.rbd.list().unwrap();
    assert_eq!(
        left.len(),
        1,
        "only another prefix's clone stays mapped: {left:?}"
    );
    assert_eq!(left[0].name, "other.pc-1");
    assert!(k.dm.list("cowctl-").unwrap().is_empty());
}

#[test]
fn the_fake_like_the_kernel_refuses_to_unmap_a_device_a_table_holds() {
    let fake = Fake::new();
    let k = fake.kernel();
    let one = map(&fake, "kroom.pc-1");
    k.dm.create(
        "cowctl-pc-1",
        &Target::linear(16384, &one.number.to_string()),
    )
    .unwrap();
    let refused = k.rbd.unmap(one.id).unwrap_err();
    assert!(refused.to_string().contains("/dev/rbd0"), "{refused}");
    k.dm.remove("cowctl-pc-1").unwrap();
    k.rbd.unmap(one.id).unwrap();
    assert!(k.rbd.list().unwrap().is_empty());
}
